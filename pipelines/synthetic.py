"""A synthetic captioned-video world: a coloured shape that moves one way, then another.

The caption names the colour, the shape and both directions in order, so the order of frames matters:
"a red circle moves left, then up" and "a red circle moves up, then left" pass through different places,
and no single frame tells every pair apart. Rendering is deterministic by seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class VideoSpec:
    colour: str
    shape: str
    first: str
    then: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moves {self.first}, then {self.then}"


def all_specs() -> list[VideoSpec]:
    return [
        VideoSpec(colour, shape, first, then)
        for colour in COLOURS
        for shape in SHAPES
        for first in DIRECTIONS
        for then in DIRECTIONS
        if first != then
    ]


def random_specs(n: int, seed: int) -> list[VideoSpec]:
    """n distinct specs (every caption names one video), in a seeded random order."""
    specs = all_specs()
    if n > len(specs):
        raise ValueError(f"the synthetic world has {len(specs)} distinct videos; asked for {n}")
    return random.Random(seed).sample(specs, n)


def render(spec: VideoSpec, frames: int, size: int) -> np.ndarray:
    """(frames, size, size, 3) uint8: the shape travels a quarter of the frame each way from the centre."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = size / 8
    out = np.full((frames, size, size, 3), 30, dtype=np.uint8)
    for t in range(frames):
        u = t / max(frames - 1, 1)
        d1, d2 = DIRECTIONS[spec.first], DIRECTIONS[spec.then]
        leg1, leg2 = min(u, 0.5), max(u - 0.5, 0.0)
        cx = size / 2 + size / 2 * (d1[0] * leg1 + d2[0] * leg2)
        cy = size / 2 + size / 2 * (d1[1] * leg1 + d2[1] * leg2)
        dx, dy = xx - cx, yy - cy
        if spec.shape == "square":
            mask = (abs(dx) <= radius) & (abs(dy) <= radius)
        elif spec.shape == "circle":
            mask = dx**2 + dy**2 <= radius**2
        else:  # triangle pointing up
            mask = (dy <= radius) & (dy >= -radius) & (abs(dx) <= (dy + radius) / 2)
        out[t][mask] = COLOURS[spec.colour]
    return out
