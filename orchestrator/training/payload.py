"""What the driver hands every Ray Train worker: one typed object, and the function that opens it.

Ray Train's controller unpickles both, importing this module and the config modules: none of them imports
torch, MLflow or the model, which keeps the controller a small process (about 0.5 GB less on the demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.config import RunConfig

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class WorkerPayload:
    run: RunConfig
    total_steps: int  # optimiser steps of the whole run: the schedule's length and the loop's end
    tracking_uri: str
    mlflow_run_id: str  # the driver's MLflow run, which rank 0 logs to
    # Ray Train resumes from the checkpoints its snapshot lists; a driver stopped between writing a
    # checkpoint and the snapshot leaves one it does not list, which the workers then start from.
    latest_checkpoint: str | None
    val_captions: pa.Table | None  # video_index, caption of the validation split; None: no validation
    label: str = ""  # before each of the run's console lines: a sweep's trial name


def run_worker(config: dict) -> None:
    """The function TorchTrainer runs on every worker (Ray Train passes a dict: the payload is inside)."""
    from orchestrator.training.recipe import train

    train(config["payload"])
