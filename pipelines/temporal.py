"""An order-twin world: videos whose captions depend on the order of events, each with a twin made of the
same frames in the other order.

A video shows one thing for its first half and another for its second ("a red circle, then a blue
square"); its twin shows the same two halves swapped ("a blue square, then a red circle"). The twin's frames
are the video's frames, rearranged: the halves are rendered once and concatenated both ways. A model that
encodes frames independently and averages them (mean-pooled CLIP) therefore gives twins the same embedding,
and cannot tell a caption from its order-swapped twin better than a coin: only a model that relates frames to
their place in time can. Single frames show one thing and are captioned by it ("a red circle"): what an
image-text model can learn from them says nothing about order.

Frame counts divisible by 2 x frames_per_group keep the property through sampling: the halves then fill
whole segments, so a twin's evaluation frames are the video's, half for half (`frame_indices`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import combinations

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
    # Neighbours of the colours above: at 64 px and under crops, naming a thing is not trivially solved.
    "orange": (240, 140, 30),
    "pink": (235, 120, 190),
    "cyan": (40, 200, 220),
}
SHAPES = ("square", "circle", "triangle", "cross", "diamond", "ring")


@dataclass(frozen=True, order=True)
class Thing:
    colour: str
    shape: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True, order=True)
class Sequence:
    first: Thing
    then: Thing

    @property
    def caption(self) -> str:
        return f"{self.first.caption}, then {self.then.caption}"

    @property
    def twin(self) -> Sequence:
        """The same two things in the other order."""
        return Sequence(self.then, self.first)


def all_things() -> list[Thing]:
    return [Thing(colour, shape) for colour in COLOURS for shape in SHAPES]


def twin_pairs(n: int, seed: int) -> list[tuple[Sequence, Sequence]]:
    """n distinct (sequence, twin) pairs in a seeded random order: n unordered pairs of different things."""
    pairs = list(combinations(all_things(), 2))
    if n > len(pairs):
        raise ValueError(f"the order-twin world has {len(pairs)} twin pairs; asked for {n}")
    return [(Sequence(a, b), Sequence(b, a)) for a, b in random.Random(seed).sample(pairs, n)]


def render_thing(thing: Thing, frames: int, size: int, *, at: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """(frames, size, size, 3) uint8: `thing` drifting a little rightwards about `at` (fractions of the
    frame), so that a half of a video is a moving scene, not one still."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = size / 6
    out = np.full((frames, size, size, 3), 30, dtype=np.uint8)
    for t in range(frames):
        cx = size * at[0] + size / 8 * (t / max(frames - 1, 1) - 0.5)
        cy = size * at[1]
        out[t][_mask(thing.shape, xx - cx, yy - cy, radius)] = COLOURS[thing.colour]
    return out


def render_sequence(sequence: Sequence, frames: int, size: int) -> np.ndarray:
    """The video of `sequence`: its first thing for frames // 2 frames, then its second."""
    if frames % 2:
        raise ValueError(f"an order-twin video needs an even number of frames, got {frames}")
    first, then = (render_thing(t, frames // 2, size) for t in (sequence.first, sequence.then))
    return np.concatenate([first, then])


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "square":
        return (abs(dx) <= r) & (abs(dy) <= r)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "triangle":  # pointing up
        return (dy <= r) & (dy >= -r) & (abs(dx) <= (dy + r) / 2)
    if shape == "diamond":
        return abs(dx) + abs(dy) <= 1.2 * r
    if shape == "ring":
        return (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
