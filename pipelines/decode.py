"""The Ray Data task that decodes, samples and crops the frames of a few videos (docs/data.md §1-2).

Kept apart, with its heavy imports (torch, decord) inside the functions: Ray Data's and Ray Train's
coordinating actors import the module of this function to unpickle the dataset, and so stay small processes;
only the decoding workers load torch. Those load neither torchvision nor open_clip (captions come tokenized,
`pipelines.dataset.train_dataset`): there is one decoding worker per CPU of a decode node, and those imports
cost each ~170 MB.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Columns of a row that carry the scan's `VideoInfo` of its video, in the dataclass's field order.
INFO_COLUMNS = ("num_frames", "fps", "width", "height")
# Columns of a row that its decoded frames keep: the video's place in its split, and a caption's tokens.
RIDE_ALONG = ("video_index", "tokens")

# Where decoding runs: first on nodes labelled as decode nodes (cluster.yaml's CPU workers), so that a GPU
# node's CPUs feed its own GPU instead of decoding for everyone; on any node when no decode node can take
# the task (there is none, as on one machine). Every Ray Data stage that opens videos uses it.
DECODE_NODE_LABEL = {"promptswitch/role": "decode"}
DECODE_PLACEMENT = {"label_selector": DECODE_NODE_LABEL, "fallback_strategy": [{"label_selector": {}}]}


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    frames_per_group: int,
    groups: int,
    size: int,
    short_side: int,
    train: bool,
    cache_path: str | None,
    crop_scale: tuple[float, float],
    flip_p: float,
    keep_failed: bool = False,
) -> dict[str, np.ndarray]:
    """Decoded, sampled, cropped frames for each row's video: (F, 3, S, S) uint8 in `frames`; the row's
    `RIDE_ALONG` columns, where given, ride along.

    A row with `window_start` / `window_end` (fractions of the video's length) samples inside that window
    only, as a segment of a long video. A video that fails is dropped, or with `keep_failed` kept with
    black frames and its error in `error` (empty when it decoded), so that a caller can report it.
    """
    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform, train_transform
    from pipelines.video import VideoError, VideoInfo

    rng = np.random.default_rng() if train else None  # fresh entropy: a new draw every epoch

    def pick_in(start: float, end: float):
        def pick(num_frames: int) -> np.ndarray:
            first = min(int(start * num_frames), num_frames - 1)
            last = max(first + 1, min(num_frames, int(np.ceil(end * num_frames))))
            return first + frame_indices(last - first, frames_per_group, groups, rng=rng)

        return pick

    windows = "window_start" in batch
    kept, frames, errors = [], [], []
    for i, path in enumerate(batch["video_path"]):
        # The scan's size rides along with the rows, so the file is opened exactly once here.
        info = VideoInfo(*(batch[k][i].item() for k in INFO_COLUMNS)) if INFO_COLUMNS[0] in batch else None
        pick = pick_in(batch["window_start"][i], batch["window_end"][i]) if windows else pick_in(0.0, 1.0)
        if keep_failed and "error" in batch and batch["error"][i]:  # failed before: nothing to decode
            frames.append(np.zeros((frames_per_group * groups, 3, size, size), np.uint8))
            errors.append(batch["error"][i])
            kept.append(i)
            continue
        try:
            raw = read_sampled_frames(
                str(path), pick, cache_path=cache_path, short_side=short_side, info=info
            )
        except VideoError as e:  # passed the scan but failed now: drop it, never the run
            log.warning("dropping video %s: %s", e.path, e.reason)
            if keep_failed:
                frames.append(np.zeros((frames_per_group * groups, 3, size, size), np.uint8))
                errors.append(e.reason)
                kept.append(i)
            continue
        if train:
            frames.append(train_transform(raw, size, rng, scale=crop_scale, flip_p=flip_p))
        else:
            frames.append(eval_transform(raw, size))
        kept.append(i)
        errors.append("")
    # The columns that ride along: with `keep_failed` all of a row's, so that a caller can report it; else
    # those a trainer or an embedder reads.
    along = [k for k in batch if k != "frames"] if keep_failed else [k for k in RIDE_ALONG if k in batch]
    out = {k: batch[k][kept] for k in along}
    if keep_failed:
        out["error"] = np.array(errors, dtype=object)
    out["frames"] = (
        np.stack(frames) if frames else np.zeros((0, frames_per_group * groups, 3, size, size), np.uint8)
    )
    return out


def read_sampled_frames(path: str, pick, *, cache_path: str | None, short_side: int, info=None) -> np.ndarray:
    """(F, H, W, 3) uint8 frames at the indices `pick(num_frames)`, from the cache or the raw file.

    `info`: the video's `VideoInfo` from the scan, which spares reading its size again.
    """
    if cache_path:
        from pipelines.cache import open_cache  # its JPEG codec is torchvision's: loaded only with a cache

        cache = open_cache(cache_path)
        return cache.read(path, pick(cache.num_frames(path)))
    from pipelines.video import open_video

    video = open_video(path, short_side=short_side, info=info)
    return video.read(pick(video.num_frames))
