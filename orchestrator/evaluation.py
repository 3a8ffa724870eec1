"""Retrieval evaluation: every video embedded once, independent of the texts; then texts and the metrics."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import torch

from model import PromptSwitchCLIP, normalize_frames, retrieval_metrics, tokenize


@torch.no_grad()
def evaluate(
    model: PromptSwitchCLIP,
    videos,  # a Ray Data dataset or iterator with video_index and frames columns
    captions: pa.Table,  # video_index and caption per query
    device: torch.device,
    *,
    batch_size: int = 16,
    autocast=contextlib.nullcontext,
) -> dict[str, float]:
    """t2v and v2t retrieval metrics for one split, multi-caption videos included."""
    was_training = model.training
    model.eval()
    n_videos = max(captions["video_index"].to_pylist()) + 1
    video_emb = None
    seen = torch.zeros(n_videos, dtype=torch.bool)
    for batch in videos.iter_torch_batches(
        batch_size=batch_size, dtypes={"frames": torch.uint8, "video_index": torch.long}
    ):
        with autocast():
            emb = model.encode_video(normalize_frames(batch["frames"].to(device))).float()
        if video_emb is None:
            video_emb = torch.zeros(n_videos, emb.shape[1], device=device)
        index = batch["video_index"].to(device)
        video_emb[index] = emb
        seen[index.cpu()] = True
    if video_emb is None:
        raise RuntimeError("no video of this split could be decoded")
    # A video that failed to decode during this pass stays a zero vector: it ranks last for its captions.
    text_emb = []
    texts = captions["caption"].to_pylist()
    for start in range(0, len(texts), 256):
        with autocast():
            text_emb.append(model.encode_text(tokenize(texts[start : start + 256]).to(device)).float())
    sims = torch.cat(text_emb) @ video_emb.T
    caption_video = torch.as_tensor(captions["video_index"].to_numpy(), device=device)
    metrics = retrieval_metrics(sims, caption_video)
    metrics["videos_missing"] = float((~seen).sum())
    model.train(was_training)
    return metrics
