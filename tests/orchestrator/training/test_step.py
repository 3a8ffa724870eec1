"""The optimiser step shared by the training loop and the overhead benchmark."""

import math

import pytest
import torch

from model import create_model
from orchestrator.config import TrainConfig
from orchestrator.training.step import autocast_for, build_optimisation, forward_losses, warmup_cosine


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(100, 0.1)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


def test_one_step_trains_both_groups_clips_and_clamps():
    torch.manual_seed(0)
    model = create_model("tiny", frames_per_group=2)
    cfg = TrainConfig(clip_lr=1e-3, new_lr=1e-2, warmup_fraction=0.0, grad_clip=0.5)
    opt = build_optimisation(model, cfg, total_steps=10)
    assert opt.scaler is None  # fp32
    assert {g["name"]: g["lr"] for g in opt.optimizer.param_groups} == {"clip": 1e-3, "new": 1e-2}
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(500.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = {
        "frames": torch.randint(0, 256, (4, 2, 3, 64, 64), dtype=torch.uint8),
        "tokens": torch.randint(1, 400, (4, 77)),
        "video_index": torch.arange(4),
    }
    losses = forward_losses(model, batch, torch.device("cpu"), autocast_for("fp32", torch.device("cpu")))
    assert set(losses) == {"loss", "contrastive", "caption"}
    opt.backward(losses["loss"])
    opt.step(model, cfg.grad_clip)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("clip.") for n in changed) and any(not n.startswith("clip.") for n in changed)
    assert model.clip.logit_scale.exp().item() == pytest.approx(100.0)
    assert opt.scheduler.last_epoch == 1  # the schedule advanced with the step


def test_fp16_gets_a_loss_scaler_and_bf16_does_not():
    model = create_model("tiny", frames_per_group=2)
    gpu = {"use_gpu": True}
    assert build_optimisation(model, TrainConfig(precision="bf16", **gpu), 10).scaler is None
    assert build_optimisation(model, TrainConfig(precision="fp16", **gpu), 10).scaler is not None
