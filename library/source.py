"""Which trained model a library is embedded with: a checkpoint, a run's best checkpoint, or an MLflow model.

Whatever the form, it comes down to the run configuration the model was trained with (`config.yaml`: the
model's shape, and the data section's sampling and cache settings that evaluation used) and its weights
(`model.safetensors`). The digest of both names the model in the library's manifest, so that a library is
never extended with embeddings of another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from model.config import ConfigError
from orchestrator.config import SELECTION_METRIC, RunConfig
from orchestrator.config_io import config_from_dict
from orchestrator.training.checkpoint import CONFIG_FILE, MODEL_FILE

RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints and metrics


@dataclass(frozen=True)
class ModelSource:
    source: str  # as the user gave it
    run: RunConfig  # the run config the model was trained with, pretrained weights left out
    weights: Path  # model.safetensors
    digest: str  # sha256 of the weights and the model's config

    @property
    def description(self) -> dict:
        return {"source": self.source, "digest": self.digest, "model": self.run.model.name}


def resolve(source: str, download_dir: Path | None = None) -> ModelSource:
    """A checkpoint folder, a run's storage folder (its best checkpoint by validation t2v R@1), or an MLflow
    model URI (`models:/name@alias`, `runs:/<id>/model`), downloaded to `download_dir`."""
    if source.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        folder = _download(source, download_dir)
        weights, config = _find(folder, "*.safetensors"), _find(folder, "*.yaml")
    else:
        folder = Path(source).expanduser()
        if (folder / RUN_SNAPSHOT).is_file() or any(folder.glob("checkpoint_*")):
            folder = best_checkpoint(folder)
        weights, config = folder / MODEL_FILE, folder / CONFIG_FILE
        if not weights.is_file() or not config.is_file():
            raise FileNotFoundError(
                f"{source} is neither a checkpoint folder ({MODEL_FILE} and {CONFIG_FILE}), a run's storage "
                "folder (checkpoint_* folders), nor an MLflow model URI (models:/name@alias, runs:/ID/model)"
            )
    text = config.read_text()
    run = config_from_dict(yaml.safe_load(text))
    run = replace(run, model=replace(run.model, pretrained=None))  # the trained weights replace CLIP's
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(yaml.safe_dump(yaml.safe_load(text)["model"], sort_keys=True).encode())
    return ModelSource(source, run, weights, digest.hexdigest()[:16])


def best_checkpoint(run_folder: Path) -> Path:
    """The checkpoint of a run with the best validation t2v R@1 (Ray Train's record); the latest without."""
    snapshot = run_folder / RUN_SNAPSHOT
    if snapshot.is_file():
        results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
        scored = [r for r in results if SELECTION_METRIC in r.get("metrics", {})]
        if scored:
            best = max(scored, key=lambda r: r["metrics"][SELECTION_METRIC])
            return run_folder / best["checkpoint_dir_name"]
    folders = sorted(run_folder.glob("checkpoint_*"))
    if not folders:
        raise FileNotFoundError(f"{run_folder} holds no checkpoint_* folder")
    return folders[-1]


def _download(uri: str, download_dir: Path | None) -> Path:
    import mlflow

    dst = str(download_dir) if download_dir else None
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=dst))


def _find(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if len(found) != 1:
        raise ConfigError(f"expected one {pattern} in the MLflow model at {folder}, found {len(found)}")
    return found[0]
