"""A one-process tour of the model API on synthetic videos: train the tiny model briefly, embed the test
videos once, then rank them for every caption. The Ray job (`promptswitch train`) does this at scale."""

from __future__ import annotations

import time

import numpy as np
import torch

from model import (
    create_model,
    format_metrics_table,
    normalize_frames,
    parameter_groups,
    retrieval_metrics,
    tokenize,
)
from pipelines.sampling import frame_indices
from pipelines.synthetic import VideoSpec, random_specs, render

FRAMES_RENDERED, SIZE, T = 24, 64, 6


def _videos(specs) -> torch.Tensor:
    """(N, frames, 3, H, W) uint8."""
    videos = np.stack([render(s, FRAMES_RENDERED, SIZE) for s in specs])
    return torch.from_numpy(videos).permute(0, 1, 4, 2, 3)


def run(steps: int = 300, batch: int = 16, seed: int = 24, n_train: int = 112, n_test: int = 32) -> dict:
    specs = random_specs(n_train + n_test, seed)
    train, test = specs[:n_train], specs[n_train:]  # test captions are combinations never seen in training
    model = train_tiny(train, steps, batch, seed)

    model.eval()
    eval_idx = frame_indices(FRAMES_RENDERED, T, groups=2)  # two independent groups of T
    with torch.no_grad():
        videos = model.encode_video(normalize_frames(_videos(test)[:, eval_idx]))  # once, text-independent
        texts = model.encode_text(tokenize([s.caption for s in test]))
    metrics = retrieval_metrics(texts @ videos.T, torch.arange(n_test))
    print(f"\ntest: {n_test} unseen videos, one caption each (chance R@1 = {100 / n_test:.1f}%)")
    print(format_metrics_table(metrics))
    return metrics


def train_tiny(train: list[VideoSpec], steps: int, batch: int = 16, seed: int = 24, log=print):
    """The tiny Prompt Switch CLIP trained from scratch on these synthetic videos, one caption each."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_train = len(train)
    train_videos, train_tokens = _videos(train), tokenize([s.caption for s in train])

    model = create_model("tiny", frames_per_group=T)
    # A random-initialised CLIP needs far larger steps than the paper's fine-tuning rates.
    optimiser = torch.optim.AdamW(
        parameter_groups(model, clip_lr=3e-4, new_lr=1e-3, weight_decay=0.2), betas=(0.9, 0.999), eps=1e-6
    )
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.choice(n_train, batch, replace=False))
        frames = torch.stack([train_videos[i, frame_indices(FRAMES_RENDERED, T, rng=rng)] for i in idx])
        losses = model(normalize_frames(frames), train_tokens[idx])
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        model.clamp_logit_scale()
        if step % 50 == 0 or step == 1:
            parts = "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            rate = step * batch / (time.perf_counter() - start)
            log(f"step {step:4d}/{steps}  {parts}  {rate:.0f} videos/s")
    return model.eval()
