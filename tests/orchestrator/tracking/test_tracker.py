"""MLflow tracking against a real sqlite store: runs, resume, artifacts, plots and the logged model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.entities import ViewType
from safetensors.torch import save_file

from model import create_model, tokenize
from orchestrator.tracking.tracker import (
    BEST_MODEL_TAG,
    Tracker,
    find_run_by_name,
    log_best_model,
    resolve_tracking_uri,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One sqlite store for the module (creating its tables takes seconds); each test has its experiment."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root


@pytest.fixture
def client(store) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store[0], registry_uri=store[0])


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_resolve_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri("sqlite:///from/config.db", tmp_path) == "sqlite:///from/config.db"
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None, tmp_path).startswith("sqlite:////")  # an absolute path


def test_new_run_logs_params_metrics_and_artifacts(store, client, tmp_path):
    uri, root = store
    tracker = Tracker.start(uri, "new-run", "first", params={"train.epochs": "2", "model.name": "tiny"})
    tracker.log_metrics({"loss": 2.5, "contrastive": 2.0}, step=1)
    tracker.log_metrics({"loss": 1.5, "contrastive": 1.25}, step=2)
    tracker.log_dict_artifact({"train": {"betas": (0.9, 0.999)}, "name": "first"}, "config/run.yaml")
    tracker.log_dict_artifact({"a": [1, 2]}, "summary.json")
    tracker.log_text("hello\n", "notes/hello.txt")
    local = tmp_path / "report.md"
    local.write_text("# report\n")
    tracker.log_file(local, "reports")
    tracker.finish()

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.params == {"train.epochs": "2", "model.name": "tiny"}
    assert _history(client, tracker.run_id, "loss") == [(1, 2.5), (2, 1.5)]
    assert _history(client, tracker.run_id, "contrastive") == [(1, 2.0), (2, 1.25)]
    assert tracker.metric_history("loss", "missing") == {"loss": [(1, 2.5), (2, 1.5)]}

    out = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "dl")))
    # Safe YAML (tuples as lists), readable by yaml.safe_load.
    assert yaml.safe_load((out / "config/run.yaml").read_text()) == {
        "train": {"betas": [0.9, 0.999]},
        "name": "first",
    }
    assert json.loads((out / "summary.json").read_text()) == {"a": [1, 2]}
    assert (out / "notes/hello.txt").read_text() == "hello\n"
    assert (out / "reports/report.md").read_text() == "# report\n"
    # Artifacts live beside the sqlite file, not in whatever directory the test runs from.
    assert Path(run.info.artifact_uri).is_relative_to(root / "mlartifacts")


def test_resume_continues_the_same_run(store, client, caplog):
    uri, _ = store
    first = Tracker.start(uri, "resume", "resumable", params={"lr": "0.1", "epochs": "2"})
    first.log_metrics({"loss": 3.0}, step=10)
    first.finish("FAILED")
    assert find_run_by_name(uri, "resume", "resumable") == first.run_id
    assert find_run_by_name(uri, "resume", "other") is None
    assert find_run_by_name(uri, "no-such-experiment", "resumable") is None

    second = Tracker.start(
        uri, "resume", "resumable", run_id=first.run_id, params={"lr": "0.1", "epochs": "4", "seed": "1"}
    )
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    second.log_metrics({"loss": 2.0}, step=20)
    second.finish()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "2", "seed": "1"}  # immutable: the first value stays
    assert run.data.tags["resumed_param.epochs"] == "4"
    assert "epochs" in caplog.text
    assert _history(client, first.run_id, "loss") == [(10, 3.0), (20, 2.0)]
    experiment = client.get_experiment_by_name("resume")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in runs] == [first.run_id]


def test_failed_block_marks_the_run_failed(store, client):
    with pytest.raises(RuntimeError), Tracker.start(store[0], "status", "boom") as tracker:
        raise RuntimeError("boom")
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        tracker.finish("DONE")


def test_log_best_model_registers_and_loads_by_alias(store, client, tmp_path, monkeypatch):
    uri, _ = store
    torch.manual_seed(0)
    model = create_model("tiny", caption_weight=0.0).eval()
    weights = tmp_path / "best.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    config_yaml = yaml.safe_dump(
        {"name": "tracking-test", "model": {"name": "tiny", "caption_weight": 0.0}, "data": {"manifest": "m"}}
    )

    tracker = Tracker.start(uri, "models", "best-model", params={"model.name": "tiny"})
    tracker.log_metrics({"val_t2v_recall_at_1": 12.5}, step=7)
    model_uri = log_best_model(tracker, weights, config_yaml, "promptswitch-test", "best", step=7)
    tracker.finish()
    assert model_uri == "models:/promptswitch-test/1"
    assert client.get_run(tracker.run_id).data.tags[BEST_MODEL_TAG] == model_uri
    assert str(client.get_model_version_by_alias("promptswitch-test", "best").version) == "1"
    # The logged model belongs to the run's experiment, not MLflow's Default one.
    experiment_id = client.get_experiment_by_name("models").experiment_id
    (logged,) = client.search_logged_models([experiment_id])
    assert logged.source_run_id == tracker.run_id
    # The metric history is not duplicated by linking the model to step 7.
    assert _history(client, tracker.run_id, "val_t2v_recall_at_1") == [(7, 12.5)]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_model resolves models:/ through the global URI
    loaded = mlflow.pyfunc.load_model("models:/promptswitch-test@best")
    captions = ["a person is cooking", "a dog runs on the beach"]
    got = np.asarray(loaded.predict(pd.DataFrame({"caption": captions})), dtype=np.float32)
    with torch.no_grad():
        want = model.encode_text(tokenize(captions)).numpy()
    assert got.shape == (2, 128)
    np.testing.assert_allclose(got, want, atol=1e-5)
