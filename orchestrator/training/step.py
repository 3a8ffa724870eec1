"""One optimiser step: AdamW with the two learning-rate groups, warm-up + cosine, clipping, mixed precision.

Shared by the training loop and `bench/train_overhead.py`, so that the benchmark times exactly the step
that training runs.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from model import normalize_frames, parameter_groups
from orchestrator.config import TrainConfig


@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only: bf16 and fp32 need no loss scaling

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, model, grad_clip: float) -> None:
        """Clip, step, zero the gradients, advance the schedule, clamp the logit scale."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        model.clamp_logit_scale()


def optimiser_steps(batches, ddp, model, opt: Optimisation, cfg: TrainConfig, device, autocast, world: int):
    """The optimiser steps of one epoch: each takes `cfg.grad_accum` micro-batches, and yields the step's
    loss sums (on the device) and the seconds it waited for data.

    Micro-batches left at the end, too few for a step, are dropped with their gradients, as a short last
    batch is dropped: carried over, they would join the next epoch's first step and make it bigger than
    the others.
    """
    micro, waited, sums = 0, 0.0, {}
    tick = time.perf_counter()
    for batch in batches:
        waited += time.perf_counter() - tick
        micro += 1
        sync = micro % cfg.grad_accum == 0
        with contextlib.nullcontext() if sync or world == 1 else ddp.no_sync():
            losses = forward_losses(ddp, batch, device, autocast)
            opt.backward(losses["loss"] / cfg.grad_accum)
        for k, v in losses.items():  # kept on the device: read only on logging steps
            sums[k] = sums.get(k, 0.0) + v.detach() / cfg.grad_accum
        if sync:
            opt.step(model, cfg.grad_clip)
            yield sums, waited
            waited, sums = 0.0, {}
        tick = time.perf_counter()
    if micro % cfg.grad_accum:
        opt.optimizer.zero_grad(set_to_none=True)


def build_optimisation(model, cfg: TrainConfig, total_steps: int) -> Optimisation:
    """AdamW over `model`'s parameters where they are now: build it after the model is on its device.

    On a GPU the fused kernel updates every parameter in one launch instead of a few per tensor.
    """
    groups = parameter_groups(
        model,
        clip_lr=cfg.clip_lr,
        new_lr=cfg.new_lr,
        weight_decay=cfg.weight_decay,
        official_grouping=cfg.official_grouping,
    )
    fused = next(model.parameters()).is_cuda
    optimizer = torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup_fraction))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    return Optimisation(optimizer, scheduler, scaler)


def forward_losses(forward, batch: dict[str, torch.Tensor], device, autocast) -> dict[str, torch.Tensor]:
    """The losses of one micro-batch of uint8 frames; `forward` is the model or its DDP wrapper.

    Every rank's micro-batch has the same size (the loop drops the last, short one), so the contrastive
    loss gathers the global batch without first exchanging sizes, a host synchronisation per step.
    """
    with autocast():
        return forward(
            normalize_frames(batch["frames"].to(device, non_blocking=True)),
            batch["tokens"].to(device, non_blocking=True),
            batch["video_index"].to(device, non_blocking=True),
            equal_batches=True,
        )


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """Linear warm-up over the first steps, then cosine decay to zero (docs/model.md §4): LambdaLR factors."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
