"""End to end on local Ray with real MLflow: the demo job cut to a few steps, a stopped and resumed driver."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.config_io import config_from_dict, load_config
from pipelines.manifest import read_manifest
from tests.orchestrator.training.reference import reference_metrics

ROOT = Path(__file__).parents[3]
SCRATCH = ROOT / "configs" / "scratch.yaml"


@pytest.fixture
def manifest(synth):
    return synth


def command(manifest, tmp_path, name, *overrides):
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(SCRATCH),
        f"name={name}",
        f"data.manifest={manifest}",
        f"storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.batch_size=8",
        "train.cpus_per_worker=0.5",
        "train.log_every_steps=1",
        *overrides,
    ]


def runs_named(tmp_path, name):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("promptswitch-demo")
    runs = client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{name}'")
    return client, runs


@pytest.mark.slow
def test_a_short_training_logs_everything_to_mlflow(manifest, tmp_path):
    result = subprocess.run(
        command(manifest, tmp_path, "short", "train.max_steps=4", "train.eval_every_steps=2",
                "data.decode_batch_size=1",  # validation in several blocks: both workers get a share
                "reference=mean pooling, t2v R@1 12.3"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 4/4" in result.stdout and "test (best checkpoint" in result.stdout
    assert result.stdout.count("step 4/4") == 1, "each progress line is printed once"
    assert result.stdout.count("validation at step") == 2
    assert "Ray: local;" in result.stdout  # a local cluster without the dashboard unless asked for
    # The test table ends with chance over the test videos, then the figure to compare with.
    rows = read_manifest(manifest).to_pylist()
    tested = len({r["video_id"] for r in rows if r["split"] == "test"})
    ending = f"chance: t2v by a random ranking of the {tested} videos.\ncompare: mean pooling, t2v R@1 12.3\n"
    assert ending in result.stdout
    # The console is the product's: Ray's plans and reports, warnings and progress bars are in the log.
    console = result.stdout + result.stderr
    for line in ("Execution plan", "TrainingReport", "Token authentication", "Warning", "Downloading"):
        assert line not in console, line
    (log,) = (tmp_path / "runs" / "short" / "logs").glob("*.log")
    assert str(log) in result.stdout
    assert "Execution plan" in log.read_text() and "TrainingReport" in log.read_text()

    client, runs = runs_named(tmp_path, "short")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "8" and run.data.params["model.name"] == "tiny"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    for name in (
        "loss_contrastive",
        "loss_caption",
        "lr_clip",
        "lr_new",
        "logit_scale",
        "samples_per_second",
        "data_wait_fraction",
    ):
        assert client.get_metric_history(run.info.run_id, name), name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_t2v_recall_at_1")] == [2, 4]
    for direction in ("t2v", "v2t"):
        for key in ("recall_at_1", "recall_at_5", "recall_at_10", "median_rank", "mean_rank"):
            assert f"test_{direction}_{key}" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "bad_videos.json", "final_metrics.json"} <= artifacts
    assert any(p.endswith(".png") for p in artifacts) or any(
        a.path.endswith(".png") for d in artifacts for a in client.list_artifacts(run.info.run_id, d)
    )
    final = json.loads(
        Path(client.download_artifacts(run.info.run_id, "final_metrics.json", str(tmp_path))).read_text()
    )
    assert final["test_t2v_recall_at_1"] == run.data.metrics["test_t2v_recall_at_1"]

    # Validation, spread over both workers, and test scoring, on the embedding job, give the metrics of
    # the plainest one-process evaluation of the same checkpoint.
    references = {}
    for folder in (tmp_path / "runs" / "short").glob("checkpoint_*/"):
        step = json.loads((folder / "state.json").read_text())["step"]
        config = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        references[step] = {s: reference_metrics(config, folder, s) for s in ("val", "test")}
    assert sorted(references) == [2, 4]
    for step, reference in references.items():
        for key, value in reference["val"].items():
            history = client.get_metric_history(run.info.run_id, f"val_{key}")
            logged = [m.value for m in history if m.step == step]
            assert logged == [pytest.approx(value, abs=1e-4)], (step, key)
    test = {k.removeprefix("test_"): v for k, v in final.items() if k.startswith("test_")}
    assert test.pop("videos_missing") == 0
    assert any(test == pytest.approx(r["test"], abs=1e-9) for r in references.values())


@pytest.mark.slow
def test_a_stopped_driver_resumes_from_its_checkpoint_in_the_same_mlflow_run(manifest, tmp_path):
    args = command(manifest, tmp_path, "resume", "train.max_steps=12", "train.eval_every_steps=3")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 400
    storage = tmp_path / "runs" / "resume"
    while not list(storage.glob("checkpoint_*/state.json")) and time.time() < deadline:
        assert first.poll() is None, first.stdout.read()[-3000:]
        time.sleep(1)
    first.send_signal(signal.SIGINT)  # a user's Ctrl-C
    try:
        first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        first.kill()
        first.wait()
    checkpointed = max(json.loads(p.read_text())["step"] for p in storage.glob("checkpoint_*/state.json"))
    assert 3 <= checkpointed < 12

    second = subprocess.run(
        [*args, "--verbose", "--dashboard"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed" in second.stdout
    assert "Execution plan" in second.stdout + second.stderr  # --verbose: Ray's own output shows too
    assert "Ray: local, dashboard on http://127.0.0.1:" in second.stdout  # asked for, so started

    client, runs = runs_named(tmp_path, "resume")
    assert len(runs) == 1, "the resumed job must continue the same MLflow run"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert max(steps) == 12
    assert min(s for s in steps if s > checkpointed) == checkpointed + 1  # continues after the checkpoint
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(steps) == list(range(1, 13)), [(m.step, m.value, m.timestamp) for m in history]
    val = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_t2v_recall_at_1")]
    assert sorted(val) == [3, 6, 9, 12]
    assert runs[0].info.status == "FINISHED"


def test_configuration_errors_name_the_key_before_ray_starts(manifest, tmp_path):
    started = time.time()
    bad = subprocess.run(
        command(manifest, tmp_path, "bad", "train.precision=fp8"), capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "train.precision='fp8'" in bad.stderr and "fp32, bf16, fp16" in bad.stderr
    unknown = subprocess.run(
        command(manifest, tmp_path, "bad", "train.learning_rate=1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "train.learning_rate" in unknown.stderr and "new_lr" in unknown.stderr
    assert "Traceback" not in bad.stderr + unknown.stderr
    assert not (tmp_path / "runs").exists()
    assert time.time() - started < 60


def test_print_config_shows_the_resolved_values(manifest, tmp_path):
    shown = subprocess.run(
        command(manifest, tmp_path, "shown", "--print-config"), capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert f"manifest: {manifest}" in shown.stdout and "batch_size: 8" in shown.stdout


def test_a_failure_after_training_closes_the_mlflow_run_as_failed(ray_local, synth, tmp_path, monkeypatch):
    from orchestrator.training import job

    def scoring_fails(run, data, tracker):
        tracker.log_metrics({"loss": 1.0}, 1)  # training went well...
        raise RuntimeError("the artifact store is full")  # ... and logging the model did not

    monkeypatch.setattr(job, "_train_and_score", scoring_fails)
    run = load_config(SCRATCH, [f"data.manifest={synth}", f"storage_path={tmp_path}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError, match="artifact store is full"):
        job._fit(run, uri)
    client = MlflowClient(uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("promptswitch-demo").experiment_id])
    assert failed.info.status == "FAILED" and failed.data.metrics["loss"] == 1.0
