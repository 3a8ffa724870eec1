"""Scoring a checkpoint on a split (`promptswitch eval`, a training job's test split) on the search path.

The split's videos are embedded by the library's embedding job (`library.embed.embedding_dataset`: decoding
tasks and an actor pool over every worker of the cluster), then one Ray task (on a GPU when the run trains on
GPUs) encodes the captions and ranks them against the videos exactly. Evaluation and search thus share one
path from a video file to its embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
import ray.train

from library import store
from library.embed import EmbedConfig, embedding_dataset
from orchestrator.config import RunConfig
from pipelines.dataset import PreparedData


def score_checkpoint(
    ckpt: ray.train.Checkpoint, run: RunConfig, data: PreparedData, split: str
) -> dict[str, float]:
    """t2v / v2t metrics of the checkpoint's model on `split` (each video embedded once)."""
    videos = data.splits[split].videos
    dataset = embedding_dataset(
        videos,
        run,
        ckpt,
        EmbedConfig(),
        cache_path=str(data.cache.path) if data.cache else None,
        precision=run.train.precision,
        use_gpu=run.train.use_gpu,
    )
    index, emb = [], []
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        ok = np.array([not e for e in batch["error"].to_pylist()], dtype=bool)
        index.append(batch["video_index"].to_numpy()[ok])
        emb.append(store.as_matrix(batch["embedding"])[ok])
    captions = data.splits[split].captions.select(["video_index", "caption"])
    task = _rank.options(num_cpus=1, num_gpus=1 if run.train.use_gpu else 0)
    return ray.get(
        task.remote(ckpt, run, np.concatenate(index), np.concatenate(emb), captions)
    )


@ray.remote
def _rank(ckpt: ray.train.Checkpoint, run: RunConfig, index: np.ndarray, emb: np.ndarray, captions):
    import torch

    from model import build_model
    from orchestrator.training import checkpoint
    from orchestrator.training.evaluation import rank_captions
    from orchestrator.training.step import autocast_for

    device = torch.device("cuda" if run.train.use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(run.model)
    with ckpt.as_directory() as folder:
        checkpoint.load_weights(Path(folder), model)
    model.to(device)
    autocast = autocast_for(run.train.precision, device)
    return rank_captions(model, index, emb, captions, device, autocast=autocast)
