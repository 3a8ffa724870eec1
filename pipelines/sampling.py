"""Which frames of a video to decode (docs/data.md §1)."""

from __future__ import annotations

import numpy as np


def frame_indices(
    num_frames: int, frames_per_group: int, groups: int = 1, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frame indices, group-major: group g takes one frame in each of the T equal segments of the video.

    With `rng` (training) the frame is uniform inside its segment; without (evaluation) group g of G sits at
    (g + 1) / (G + 1) of every segment, so for G = 2 the groups take the 1/3 and 2/3 points and each group
    spans the whole video. A video shorter than T frames repeats its last frame.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    t = frames_per_group
    if num_frames < t:
        one_group = np.minimum(np.arange(t), num_frames - 1)
        return np.tile(one_group, groups)
    edges = np.linspace(0, num_frames, t + 1)
    starts = np.floor(edges[:-1]).astype(int)
    ends = np.maximum(np.floor(edges[1:]).astype(int), starts + 1)  # exclusive
    if rng is not None:
        picks = [rng.integers(starts, ends) for _ in range(groups)]
    else:
        spans = ends - starts
        picks = [np.floor(starts + spans * (g + 1) / (groups + 1)).astype(int) for g in range(groups)]
    return np.concatenate(picks)
