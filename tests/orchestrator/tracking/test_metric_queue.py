"""Metrics go to MLflow through a queue: logging never waits on the server, and an outage loses nothing."""

import subprocess
import sys
import time

from mlflow import MlflowClient

from orchestrator.tracking.metric_queue import MetricQueue
from orchestrator.tracking.server import _free_port, _server_env, _stop, _wait_ready


def _server(tmp_path, port):
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{tmp_path / 'm.db'}", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 (the server writes it while it runs)
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=_server_env())
    _wait_ready(f"http://127.0.0.1:{port}", server, tmp_path / "server.log", 120)
    return server


def test_metrics_logged_while_the_server_is_down_arrive_once_it_is_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the queue does the retrying
    port = _free_port("127.0.0.1")
    server = _server(tmp_path, port)
    client = MlflowClient(f"http://127.0.0.1:{port}")
    run_id = client.create_run("0").info.run_id
    queue = MetricQueue(client, run_id)
    queue.log({"loss": 1.0}, 1)
    assert queue.flush(30)

    _stop(server)
    started = time.perf_counter()
    for step in range(2, 51):
        queue.log({"loss": float(step), "lr": 0.1}, step)
    assert time.perf_counter() - started < 0.5, "logging must not wait for the server"
    time.sleep(3)
    assert len(queue.pending()) == 98  # kept, in order
    assert queue.pending()[0][:2] == ["loss", 2.0] and queue.pending()[-1][3] == 50

    server = _server(tmp_path, port)
    try:
        assert queue.close(timeout=90)
        steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert sorted(steps) == list(range(1, 51)), "every step once"
        assert len(client.get_metric_history(run_id, "lr")) == 49
    finally:
        _stop(server)


def test_what_a_checkpoint_kept_is_delivered_by_the_next_queue(tmp_path):
    away = MetricQueue(MlflowClient("http://127.0.0.1:1"), "no-run")
    away.log({"val_t2v_recall_at_1": 42.0}, 7)
    kept = away.pending()
    away.close(timeout=0)

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run_id = client.create_run("0").info.run_id
    queue = MetricQueue(client, run_id, kept)  # as a resumed run builds it from its checkpoint
    assert queue.close(timeout=30)
    (metric,) = client.get_metric_history(run_id, "val_t2v_recall_at_1")
    assert (metric.value, metric.step) == (42.0, 7)
    queue.close(timeout=1)
