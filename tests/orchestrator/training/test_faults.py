"""Faults injected into the demo job: a training worker SIGKILLed mid-epoch, the tracking server gone for
longer than MLflow's retries last. Training goes on and no metric is lost or logged twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from orchestrator.tracking.server import _free_port, _server_env, _stop, _wait_ready

ROOT = Path(__file__).parents[3]


def _train(manifest, tmp_path, uri, *overrides, env=None):
    argv = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "scratch.yaml"),
            "name=f", f"data.manifest={manifest}", f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={uri}", "train.batch_size=8", "train.log_every_steps=1",
            *overrides]  # fmt: skip
    return subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | (env or {}))  # fmt: skip


def _history(uri, key):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("promptswitch-demo").experiment_id])
    return run, client.get_metric_history(run.info.run_id, key)


def _wait_for_step(uri, step, job, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert job.poll() is None, job.stdout.read()[-3000:]
        try:
            if any(m.step >= step for m in _history(uri, "loss")[1]):
                return
        except Exception:  # no experiment or run yet, or the store is busy
            pass
        time.sleep(0.5)
    raise TimeoutError(f"step {step} was not logged in {timeout} s")


@pytest.mark.slow
def test_a_killed_training_worker_is_replaced_and_every_step_is_logged_once(synth, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    budget = ("train.max_steps=12", "train.eval_every_steps=4", "train.max_failures=2")
    job = _train(synth, tmp_path, uri, *budget)
    _wait_for_step(uri, 5, job)
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in str(p.info["cmdline"])]
    assert workers
    workers[-1].send_signal(signal.SIGKILL)  # mid-epoch, between checkpoints
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    (log,) = (tmp_path / "runs" / "f" / "logs").glob("*.log")  # Ray's own lines are in the job's log
    assert "[FailurePolicy] RETRY" in log.read_text()  # the worker was lost, and the group restarted
    run, loss = _history(uri, "loss")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in loss) == list(range(1, 13)), "every step once"
    assert sorted(m.step for m in _history(uri, "val_t2v_recall_at_1")[1]) == [4, 8, 12]


@pytest.mark.slow
def test_a_tracking_outage_costs_no_throughput_and_loses_no_metric(synth, tmp_path):
    port = _free_port("127.0.0.1")
    uri = f"http://127.0.0.1:{port}"

    def server():
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{tmp_path / 's.db'}", "--default-artifact-root", str(tmp_path / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        with open(tmp_path / "server.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=_server_env())
        _wait_ready(uri, proc, tmp_path / "server.log", 120)
        return proc

    up = server()
    # MLflow's own retries made short, so that the outage outlasts them many times over.
    fast_failing = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    job = _train(synth, tmp_path, uri, "train.max_steps=90", "train.eval_every_steps=45", env=fast_failing)
    try:
        _wait_for_step(uri, 20, job)
        _stop(up)
        down_from = time.time() * 1000
        time.sleep(20)
        down_to = time.time() * 1000
        assert job.poll() is None, "training goes on without the server"
        up = server()
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, out[-3000:]
        run, loss = _history(uri, "loss")
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in loss) == list(range(1, 91)), "every metric reached the server, once"
        _, speed = _history(uri, "samples_per_second")
        before = [m.value for m in speed if m.timestamp < down_from and m.step > 5]
        during = [m.value for m in speed if down_from + 2000 < m.timestamp < down_to]
        assert len(during) >= 10, "steps were trained during the outage"
        median = sorted(during)[len(during) // 2] / sorted(before)[len(before) // 2]
        assert median > 0.8, f"samples/s during the outage {median:.2f}x of before"
    finally:
        _stop(up)
        if job.poll() is None:
            job.kill()
