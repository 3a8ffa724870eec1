"""The tiny CLIP pretrained on images: the starting point Prompt Switch assumes, made in a minute on a CPU.

The paper adapts a CLIP that learnt colours and shapes from images; a randomly initialised tiny CLIP must
learn them and order at once. This trains the plain tiny CLIP contrastively on single frames of the
order-twin world (`pipelines/temporal.py`), each captioned by what it shows ("a red circle"): nothing about
time. The result is an open_clip checkpoint (safetensors) that `model.pretrained=PATH` loads exactly as it
loads OpenAI's weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import open_clip
import safetensors.torch
import torch

from model import contrastive_loss, normalize_frames, tokenize
from model.config import clip_config
from model.losses import clamp_logit_scale
from pipelines.temporal import all_things, render_thing

SIZE = 64  # the tiny CLIP's input size
CHANCE = 100 / len(all_things())  # `image_accuracy` of naming each thing at random (%)


def pretrain_tiny_clip(
    out: str | Path, *, steps: int = 400, batch: int = 24, lr: float = 1e-3, seed: int = 0, log=print
) -> Path:
    """Train the tiny CLIP on single frames for `steps` steps and save it to `out` (.safetensors)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    things = all_things()
    tokens = tokenize([t.caption for t in things])
    clip = open_clip.CLIP(**clip_config("tiny"))
    optimiser = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        # Each thing at most once a batch: its caption has exactly one positive.
        pick = rng.choice(len(things), min(batch, len(things)), replace=False)
        images = torch.from_numpy(np.stack([_frame(things[i], rng) for i in pick])).permute(0, 3, 1, 2)
        image_emb = clip.encode_image(normalize_frames(images), normalize=True)
        text_emb = clip.encode_text(tokens[pick], normalize=True)
        loss = contrastive_loss(text_emb, image_emb, clip.logit_scale)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        clamp_logit_scale(clip)
        if step % 100 == 0 or step == steps:
            rate = step * len(pick) / (time.perf_counter() - start)
            log(f"image pretraining step {step}/{steps}  loss {loss.item():.3f}  {rate:.0f} images/s")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out))
    return out


@torch.no_grad()
def image_accuracy(weights: str | Path, seed: int = 1, per_thing: int = 4) -> float:
    """Top-1 accuracy (%) of the checkpoint at naming each thing from a frame it has not seen."""
    from model.weights import load_clip_weights

    clip = open_clip.CLIP(**clip_config("tiny"))
    load_clip_weights(clip, weights)
    things, rng = all_things(), np.random.default_rng(seed)
    texts = clip.encode_text(tokenize([t.caption for t in things]), normalize=True)
    frames = np.stack([_frame(t, rng) for t in things for _ in range(per_thing)])
    images = clip.encode_image(normalize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2)), normalize=True)
    truth = torch.arange(len(things)).repeat_interleave(per_thing)
    return 100 * float(((images @ texts.T).argmax(1) == truth).float().mean())


def _frame(thing, rng: np.random.Generator) -> np.ndarray:
    """One frame of `thing` somewhere near the centre, at a random moment of its drift."""
    at = tuple(rng.uniform(0.35, 0.65, 2))
    clip = render_thing(thing, 8, SIZE, at=at)
    return clip[rng.integers(len(clip))]
