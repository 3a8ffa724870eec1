"""Scoring a checkpoint on a split in one Ray task (on a GPU when the run trains on GPUs)."""

from __future__ import annotations

from pathlib import Path

import ray
import ray.train
import torch

from model import build_model
from orchestrator import checkpoint
from orchestrator.config import RunConfig
from orchestrator.config_io import config_from_dict, config_to_dict
from orchestrator.evaluation import evaluate
from orchestrator.step import autocast_for
from pipelines.dataset import PreparedData, eval_dataset


def score_checkpoint(
    ckpt: ray.train.Checkpoint, run: RunConfig, data: PreparedData, split: str
) -> dict[str, float]:
    """t2v / v2t metrics of the checkpoint's model on `split` (each video embedded once)."""
    videos = eval_dataset(data, run.data, run.model.frames_per_group, split)
    captions = data.splits[split].captions.select(["video_index", "caption"])
    task = _score.options(num_cpus=1, num_gpus=1 if run.train.use_gpu else 0)
    return ray.get(task.remote(ckpt, config_to_dict(run), videos, captions))


@ray.remote
def _score(ckpt: ray.train.Checkpoint, run_dict: dict, videos, captions) -> dict[str, float]:
    run = config_from_dict(run_dict)
    device = torch.device("cuda" if run.train.use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(run.model)
    with ckpt.as_directory() as folder:
        checkpoint.load_weights(Path(folder), model)
    model.to(device)
    return evaluate(model, videos, captions, device, autocast=autocast_for(run.train.precision, device))
