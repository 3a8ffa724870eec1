"""Training checkpoints: model, optimiser, scheduler, step, RNG state, resolved config and MLflow run id.

Model weights are safetensors and the optimiser state is loaded with torch.load(weights_only=True): loading
a checkpoint never runs pickled code.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from orchestrator.training.step import Optimisation

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs completed
    best_score: float = float("-inf")  # best validation t2v R@1 so far
    mlflow_run_id: str | None = None
    # Metrics MLflow had not taken when the checkpoint was made: [key, value, timestamp_ms, step] each.
    undelivered_metrics: list = field(default_factory=list)


def save(folder: Path, model: nn.Module, opt: Optimisation, state: TrainState, config_yaml: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(_contiguous(model.state_dict()), folder / MODEL_FILE)
    torch.save(
        {
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler else None,
            "torch_rng": torch.get_rng_state(),
        },
        folder / OPTIM_FILE,
    )
    rng = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}
    (folder / STATE_FILE).write_text(json.dumps(state.__dict__ | {"rng": rng}, indent=1))
    (folder / CONFIG_FILE).write_text(config_yaml)


def load(folder: Path, model: nn.Module, opt: Optimisation) -> TrainState:
    """Model, optimiser, schedule, loss scaler and RNG state back from `folder`; returns the step and run.

    The model must already be on its device: the optimiser state is loaded onto its parameters' device.
    """
    device = next(model.parameters()).device
    model.load_state_dict(safetensors.torch.load_file(folder / MODEL_FILE, device=_device_name(device)))
    raw = json.loads((folder / STATE_FILE).read_text())
    rng = raw.pop("rng")
    # Read to the CPU; the optimiser casts each state tensor to its parameter's device as it loads it.
    saved = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    if opt.scaler is not None and saved["scaler"]:
        opt.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(_tuples(rng["python"]))
    np.random.set_state(_tuples(rng["numpy"]))
    return TrainState(**raw)


def load_weights(path: Path, model: nn.Module) -> None:
    """The model's weights from a checkpoint folder, or from a safetensors file (an MLflow model's)."""
    path = Path(path)
    model.load_state_dict(safetensors.torch.load_file(path / MODEL_FILE if path.is_dir() else path))


def _device_name(device: torch.device) -> str:
    # safetensors places tensors by name ("cpu", "cuda:0"); a device it cannot place on (meta) reads to CPU.
    return str(device) if device.type in ("cpu", "cuda") else "cpu"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a copy of every tensor is cheap next to the save.
    return {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(x) for x in obj]
    return obj


def _tuples(obj):
    # JSON turned the RNG states' tuples into lists; both setstate functions want tuples back.
    if isinstance(obj, list) and obj and isinstance(obj[0], str):  # numpy: ("MT19937", keys, pos, ...)
        return (obj[0], np.asarray(obj[1], dtype=np.uint32), *obj[2:])
    return tuple(tuple(x) if isinstance(x, list) else x for x in obj)
