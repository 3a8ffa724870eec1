"""Symmetric InfoNCE over the global batch (SPEC 3.2)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows.

    Every rank computes the same global loss, so summing the ranks' gradients gives world_size times the
    true gradient, and DDP's averaging over ranks brings the parameter gradients back to exactly the
    single-process ones. Ranks may hold batches of different sizes (the last batch of an epoch).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rows, sizes = _all_gather_rows(x)
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        return rows

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start : start + n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x)


def contrastive_loss(
    text: torch.Tensor,
    video: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather: bool = False,
    video_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of text->video and video->text cross-entropy over exp(logit_scale) * cosine similarities.

    Row i of `text` and `video` are a positive pair; every other row of the (global) batch is a negative,
    so a batch must hold each video once. With `video_ids`, rows that share a video (say, two captions of it
    on two workers) are kept out of each other's negatives instead. Inputs are L2-normalised embeddings.
    """
    if gather:
        text, video = gather_with_grad(text), gather_with_grad(video)
    logits = logit_scale.exp() * text @ video.T
    if video_ids is not None:
        if gather:
            video_ids = _all_gather_rows(video_ids)[0]
        same = video_ids[:, None] == video_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels)) / 2


def _all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows, concatenated in rank order, and how many each rank had (counts may differ)."""
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]), sizes
