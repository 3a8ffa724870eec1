"""Symmetric InfoNCE over the global batch (docs/model.md §3.2)."""

from __future__ import annotations

import math

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
    def forward(ctx, x: torch.Tensor, equal_sizes: bool) -> torch.Tensor:
        rows, sizes = _all_gather_rows(x, equal_sizes)
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        return rows

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start : start + n], None


def gather_with_grad(x: torch.Tensor, equal_sizes: bool = False) -> torch.Tensor:
    return _GatherWithGrad.apply(x, equal_sizes)


def contrastive_loss(
    text: torch.Tensor,
    video: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather: bool = False,
    video_ids: torch.Tensor | None = None,
    equal_sizes: bool = False,
) -> torch.Tensor:
    """Mean of text->video and video->text cross-entropy over exp(logit_scale) * cosine similarities.

    Row i of `text` and `video` are a positive pair; every other row of the (global) batch is a negative,
    so a batch must hold each video once. With `video_ids`, rows that share a video (say, two captions of it
    on two workers) are kept out of each other's negatives instead. Inputs are L2-normalised embeddings.
    `equal_sizes` promises that every rank holds as many rows, which saves exchanging the counts.
    """
    if gather:
        text, video = gather_with_grad(text, equal_sizes), gather_with_grad(video, equal_sizes)
    # The similarities in fp32 even under bf16 autocast: at a logit scale of 100, bf16's 8-bit mantissa
    # would round cosines 0.004 apart to the same logit, and the batch is small enough that fp32 is free.
    with torch.autocast(text.device.type, enabled=False):
        logits = logit_scale.float().exp() * text.float() @ video.float().T
    if video_ids is not None:
        if gather:
            video_ids = _all_gather_rows(video_ids, equal_sizes)[0]
        same = video_ids[:, None] == video_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _all_gather_rows(x: torch.Tensor, equal_sizes: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows, concatenated in rank order, and how many each rank had (counts may differ).

    Unequal counts cost an exchange of the counts and a host synchronisation (`int()`) to read them;
    `equal_sizes` skips both.
    """
    world = dist.get_world_size()
    if equal_sizes:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts), [x.shape[0]] * world
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]), sizes


@torch.no_grad()
def clamp_logit_scale(clip, max_scale: float = 100.0) -> None:
    """CLIP's temperature cap: `clip.logit_scale` at most ln `max_scale`, after every optimiser step."""
    clip.logit_scale.clamp_(0, math.log(max_scale))
