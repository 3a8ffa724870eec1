"""Frame transforms (docs/data.md §2), on CPU workers on uint8 frames; the trainer gets uint8 (F, 3, S, S).

The same crop and flip for every frame of a video. Training: RandomResizedCrop(size, scale 0.5-1.0,
ratio 3/4-4/3) and a horizontal flip with p = 0.5, drawn from a numpy Generator so that a seed
reproduces them. Evaluation: resize the short side to `size` (bicubic) and centre-crop `size`.
`model.factory.normalize_frames` turns the uint8 output into normalised floats on the trainer.

Plain torch, not torchvision: these run in every decoding worker (one per CPU of a decode node), and
torchvision's import costs each of them ~90 MB. `torch.nn.functional.interpolate` on uint8 with antialias
is the kernel torchvision's resize calls for uint8 frames, so the output is the same to the bit (a test holds
it to torchvision's).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

TRAIN_SCALE = (0.5, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = TRAIN_SCALE,
    ratio: tuple[float, float] = TRAIN_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, h, w), drawn as torchvision's RandomResizedCrop.get_params draws it, but from `rng`.

    Ten tries at a box of `scale` of the area and an aspect ratio log-uniform in `ratio`; if none fits,
    the largest centred box whose aspect ratio is inside `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(
    frames: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = TRAIN_SCALE,
    flip_p: float = FLIP_P,
) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3, size, size) uint8: one random resized crop (bilinear, antialiased)
    and one horizontal flip with probability `flip_p`, the same for every frame. Draws the crop, then the
    flip, from `rng`."""
    video = _to_tensor(frames)
    top, left, h, w = random_resized_crop_box(video.shape[-2], video.shape[-1], rng, scale)
    flip = bool(rng.random() < flip_p)
    crop = video[..., top : top + h, left : left + w]
    out = F.interpolate(crop, (size, size), mode="bilinear", antialias=True)
    if flip:
        out = out.flip(-1)
    return _to_numpy(out)


def eval_transform(frames: np.ndarray, size: int) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3, size, size) uint8: short side to `size` (bicubic, antialias), centre crop.

    Frames whose short side is already `size` are only cropped, so decoding with `short_side=size`
    (pipelines.video.decode_frames) leaves no second resize here.
    """
    video = _to_tensor(frames)
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short != size:
        long = int(size * long / short)  # torchvision's rounding of the long side
        video = F.interpolate(
            video, (size, long) if height <= width else (long, size), mode="bicubic", antialias=True
        )
        height, width = video.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return _to_numpy(video[..., top : top + size, left : left + size])


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy array, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames of shape (F, H, W, 3) with F >= 1, got {frames.shape}")
    if not frames.flags.writeable:  # e.g. a view of an Arrow buffer; torch wants writable memory
        frames = frames.copy()
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def _to_numpy(video: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(video.contiguous().numpy())
