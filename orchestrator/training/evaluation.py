"""Retrieval evaluation in two halves: every video embedded once, independent of the texts (on whichever
workers hold the video), then every caption encoded and ranked against all the videos in one place.

The halves are apart because the first is spread out (the training workers' shares of the validation split,
or the library's embedding job for `promptswitch eval` and the test split) and the second is not.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from model import PromptSwitchCLIP, normalize_frames, retrieval_metrics, tokenize

TEXT_BATCH = 256


@torch.no_grad()
def embed_videos(
    model: PromptSwitchCLIP,
    videos,
    device: torch.device,
    *,
    batch_size: int = 16,
    autocast=contextlib.nullcontext,
) -> tuple[np.ndarray, np.ndarray]:
    """(video_index, embeddings) of every video this iterator yields (a Ray Data dataset or shard with
    video_index and frames columns); fp32 embeddings on the host."""
    was_training = model.training
    model.eval()
    indices, embeddings = [], []
    for batch in videos.iter_torch_batches(
        batch_size=batch_size, dtypes={"frames": torch.uint8, "video_index": torch.long}
    ):
        with autocast():
            emb = model.encode_video(normalize_frames(batch["frames"].to(device))).float()
        indices.append(batch["video_index"].numpy())
        embeddings.append(emb.cpu().numpy())
    model.train(was_training)
    dim = model.config.embed_dim
    if not indices:  # this worker's share was empty
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return np.concatenate(indices), np.concatenate(embeddings)


@torch.no_grad()
def rank_captions(
    model: PromptSwitchCLIP,
    video_index: np.ndarray,
    video_emb: np.ndarray,
    captions: pa.Table,  # video_index and caption per query
    device: torch.device,
    *,
    autocast=contextlib.nullcontext,
) -> dict[str, float]:
    """t2v and v2t retrieval metrics: each caption scored against every video by exact inner product.

    The metrics need every caption's rank among all videos (median and mean rank too), so the whole score
    matrix is formed: an exact search with k the number of videos. A video that could not be embedded stays
    a zero vector and ranks last for its captions; `videos_missing` counts them.
    """
    if not len(video_index):
        raise RuntimeError("no video of this split could be decoded")
    was_training = model.training
    model.eval()
    n_videos = max(captions["video_index"].to_pylist()) + 1
    videos = torch.zeros(n_videos, video_emb.shape[1], device=device)
    # Copies: the arrays may be read-only views of Ray's object store, which torch will not wrap.
    rows = torch.as_tensor(np.array(video_index), device=device)
    videos[rows] = torch.as_tensor(np.array(video_emb), device=device)
    texts = captions["caption"].to_pylist()
    text_emb = []
    for start in range(0, len(texts), TEXT_BATCH):
        with autocast():
            text_emb.append(model.encode_text(tokenize(texts[start : start + TEXT_BATCH]).to(device)).float())
    sims = torch.cat(text_emb) @ videos.T
    metrics = retrieval_metrics(sims, torch.as_tensor(captions["video_index"].to_numpy(), device=device))
    metrics["videos_missing"] = float(n_videos - len(np.unique(video_index)))
    model.train(was_training)
    return metrics


def validate(
    model: PromptSwitchCLIP, share, captions: pa.Table, device, autocast, rank: int
) -> dict[str, float]:
    """Training's validation over the worker group: every worker embeds its share of the validation videos,
    rank 0 gathers them and ranks the captions against all of them, and every worker gets the metrics."""
    index, emb = embed_videos(model, share, device, autocast=autocast)
    shares = _gather((index, emb))
    scores = None
    if rank == 0:
        index, emb = (np.concatenate(parts) for parts in zip(*shares, strict=True))
        scores = rank_captions(model, index, emb, captions, device, autocast=autocast)
    return _broadcast(scores)


def _gather(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
