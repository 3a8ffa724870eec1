"""A tiny sweep end to end: `train.py --sweep` on local Ray, the trials logged to MLflow through a server."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.config_io import load_config
from orchestrator.sweeps.sweep import STOPPED_EARLY_TAG
from pipelines.synth import write_synthetic_dataset

ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), videos=24, seed=5, frames=24, size=64)


def sweep_file(tmp_path, manifest) -> Path:
    sweep = {
        "name": "sweep-test",
        "base": str(ROOT / "configs" / "scratch.yaml"),
        "base_overrides": [
            f"data.manifest={manifest}",
            f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        "trial_overrides": [
            "train.max_steps=4",
            "train.eval_every_steps=2",
            "train.num_workers=1",
            "train.cpus_per_worker=0.5",
            "train.log_every_steps=1",
        ],
        "search": {"algorithm": "grid"},
        "early_stopping": {"grace_period": 1, "reduction_factor": 2},
        # 4096 pairs per step is more than the training split holds: that trial fails when it starts.
        "space": {"train.batch_size": {"choice": [4, 8, 4096]}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_command(path: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--sweep", str(path)]


def interrupt_after_first_trial(path: Path, cwd: Path) -> tuple[int, str]:
    """Start the sweep, Ctrl-C it once its second trial has started; its exit status and output."""
    log = cwd / "interrupted.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(sweep_command(path), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        trials = cwd / "runs" / "sweep-test-trials"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            if trials.is_dir() and len(list(trials.iterdir())) >= 2:
                time.sleep(3)
                break
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=300)
    return code, log.read_text()


@pytest.mark.slow
def test_a_tiny_sweep_nests_its_trials_survives_a_failing_one_and_resumes(ray_local, manifest, tmp_path):
    # `ray_local` keeps a second Ray instance on the machine: Ray Train's placement-group cleaner once failed
    # then, and a stopped trial's reserved CPUs starved the next trial's decoding.
    path = sweep_file(tmp_path, manifest)
    code, output = interrupt_after_first_trial(path, tmp_path)
    assert code == 130 and "interrupted; the same command resumes it" in output, output[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("promptswitch-demo")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'sweep-test'")
    assert parent.info.status == "KILLED"

    # The same name again resumes: the finished trial is kept, the others run, the parent run continues.
    result = subprocess.run(sweep_command(path), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "resuming the sweep" in result.stdout
    assert "Train the best configuration in full:" in result.stdout
    assert "failed:" in result.stdout and "larger than the training set" in result.stdout
    # The console shows the trials' lines under their names; Tune's tables and MLflow's links are not shown.
    assert "validation at step" in result.stdout and "sweep-test-" in result.stdout
    assert "Trial status" not in result.stdout and "View run" not in result.stdout

    (parent,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'sweep-test'")
    assert parent.info.status == "FINISHED"
    parent_id = parent.info.run_id
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == 3  # no trial ran twice
    by_batch = {c.data.params["train.batch_size"]: c for c in children}
    assert set(by_batch) == {"4", "8", "4096"}
    assert by_batch["4096"].info.status == "FAILED"
    for batch in ("4", "8"):
        child = by_batch[batch]
        stopped = child.data.tags.get(STOPPED_EARLY_TAG) == "true"
        assert child.info.status == ("KILLED" if stopped else "FINISHED"), (batch, child.info.status)
        assert client.get_metric_history(child.info.run_id, "val_t2v_recall_at_1")
        assert client.get_metric_history(child.info.run_id, "loss")
        assert child.data.params["train.max_steps"] == "4"
    assert parent.data.metrics["trials_failed"] == 1
    assert parent.data.metrics["trials_finished"] + parent.data.metrics["trials_stopped"] == 2

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "best_command.txt", "leaderboard.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/val_t2v_recall_at_1_vs_train.batch_size.png"}
    best_yaml = tmp_path / "best_config.yaml"
    client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    best = load_config(best_yaml)
    best_trial = parent.data.tags["promptswitch.best_trial"]
    best_child = next(c for c in children if c.info.run_name.endswith(best_trial))
    assert str(best.train.batch_size) == best_child.data.params["train.batch_size"]
    assert best.train.max_steps == 300 and best.name == "sweep-test-best"  # the preset's full budget
