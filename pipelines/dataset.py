"""Ray Data datasets of decoded frames, one per split (docs/data.md).

Rows stay tiny (paths and captions) until a Ray Data task on a CPU worker decodes the sampled frames of a few
videos with decord (or reads them from the preprocessing cache), crops them and ships uint8 frames through the
object store; normalisation happens on the trainer's device. Training shuffles the tiny rows, so every epoch
sees a fresh order without a global shuffle of decoded frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import scan_memory
from pipelines.cache import CacheInfo, build_cache
from pipelines.config import DataConfig
from pipelines.decode import DECODE_PLACEMENT, INFO_COLUMNS, decode_batch, read_sampled_frames
from pipelines.manifest import SPLITS, read_manifest
from pipelines.sampling import frame_indices
from pipelines.transforms import eval_transform
from pipelines.video import VideoError, VideoInfo, file_identity, probe


class TooManyBadVideos(RuntimeError):
    pass


@dataclass(frozen=True)
class BadVideoReport:
    total: int
    bad: list[dict]  # {"video": path, "error": reason}

    @property
    def fraction(self) -> float:
        return len(self.bad) / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"total": self.total, "ok": self.total - len(self.bad), "bad": self.bad}

    def check(self, max_fraction: float) -> None:
        if self.fraction > max_fraction:
            shown = "\n".join(f"  {b['video']}: {b['error']}" for b in self.bad[:20])
            raise TooManyBadVideos(
                f"{len(self.bad)} of {self.total} videos ({self.fraction:.1%}) cannot be decoded, more than "
                f"data.max_bad_fraction={max_fraction:g}:\n{shown}"
                + ("\n  ..." if len(self.bad) > 20 else "")
            )


@dataclass(frozen=True)
class Split:
    name: str
    captions: pa.Table  # a row per caption of a good video: video_index, video_id, video_path, caption
    videos: pa.Table  # a row per good video, in video_index order: video_index, video_id, video_path
    # Both also carry INFO_COLUMNS (frame count, fps, size) when the videos were scanned (no cache).


@dataclass(frozen=True)
class PreparedData:
    splits: dict[str, Split]
    report: BadVideoReport
    cache: CacheInfo | None


def prepare_data(config: DataConfig, frames_per_group: int) -> PreparedData:
    """Read the manifest, find the bad videos (building or reusing the cache when configured) and drop them.

    Raises TooManyBadVideos when more than `config.max_bad_fraction` of the videos are bad.
    """
    table = read_manifest(config.manifest)
    videos = sorted(set(table["video_path"].to_pylist()))
    cache = build_cache(videos, config) if config.cache_dir else None
    if cache:
        report, infos = BadVideoReport(len(videos), cache.bad), None
    else:
        report, infos = _scan_remembered(videos, config, frames_per_group)
    report.check(config.max_bad_fraction)
    bad = pa.array([b["video"] for b in report.bad], pa.string())
    good = table.filter(pc.invert(pc.is_in(table["video_path"], value_set=bad)))
    splits = {name: _split(name, good, infos) for name in SPLITS}
    return PreparedData({k: v for k, v in splits.items() if len(v.captions)}, report, cache)


def _split(name: str, table: pa.Table, infos: dict[str, VideoInfo] | None) -> Split:
    rows = table.filter(pc.equal(table["split"], name))
    paths = rows["video_path"].to_pylist()
    order = list(dict.fromkeys(paths))  # first-seen order, stable across runs
    index = {p: i for i, p in enumerate(order)}
    ids = dict(zip(paths, rows["video_id"].to_pylist(), strict=True))
    captions = pa.table(
        {
            "video_index": pa.array([index[p] for p in paths], pa.int64()),
            "video_id": rows["video_id"],
            "video_path": rows["video_path"],
            "caption": rows["caption"],
        }
    )
    videos = pa.table(
        {
            "video_index": pa.array(range(len(order)), pa.int64()),
            "video_id": [ids[p] for p in order],
            "video_path": order,
        }
    )
    if infos is not None:
        for key in INFO_COLUMNS:
            captions = captions.append_column(key, [[getattr(infos[p], key) for p in paths]])
            videos = videos.append_column(key, [[getattr(infos[p], key) for p in order]])
    return Split(name, captions, videos)


def _scan_remembered(videos: list[str], config: DataConfig, frames_per_group: int):
    """`scan_videos` of the videos the last scan did not see as they are now; the others' verdicts kept."""
    settings = {
        "frames_per_group": frames_per_group,
        "eval_groups": config.eval_groups,
        "image_size": config.image_size,
        "short_side": config.cache_short_side,
    }
    identities = {v: file_identity(v) for v in videos}  # each file's stat, once
    verdicts = scan_memory.recall(config.manifest, settings, identities)
    todo = [v for v in videos if v not in verdicts]
    if todo:
        report, infos = scan_videos(todo, config, frames_per_group)
        errors = {b["video"]: b["error"] for b in report.bad}
        verdicts |= {v: (errors.get(v, ""), infos.get(v)) for v in todo}
        scan_memory.remember(config.manifest, settings, verdicts, identities)
    bad = [{"video": v, "error": verdicts[v][0]} for v in videos if verdicts[v][0]]
    return BadVideoReport(len(videos), bad), {v: verdicts[v][1] for v in videos if not verdicts[v][0]}


def scan_videos(
    videos: list[str], config: DataConfig, frames_per_group: int
) -> tuple[BadVideoReport, dict[str, VideoInfo]]:
    """Open every video and decode its evaluation frames, in parallel on Ray.

    Returns the report of the ones that fail and the `VideoInfo` of the ones that work.
    """
    import ray.data

    options = {
        "frames_per_group": frames_per_group,
        "groups": config.eval_groups,
        # Without a model (`promptswitch data check`) any crop shows that a video decodes: the cached size.
        "size": config.image_size or config.cache_short_side,
        "short_side": config.cache_short_side,
    }
    found = _blocks(pa.table({"video_path": videos}), config.decode_batch_size)
    rows = (
        ray.data.from_arrow(found)
        .map_batches(_check_batch, batch_size=config.decode_batch_size, fn_kwargs=options, **DECODE_PLACEMENT)
        .take_all()
    )
    report = BadVideoReport(
        len(videos), [{"video": r["video_path"], "error": r["error"]} for r in rows if r["error"]]
    )
    infos = {r["video_path"]: VideoInfo(*(r[k] for k in INFO_COLUMNS)) for r in rows if not r["error"]}
    return report, infos


def _check_batch(
    batch: dict[str, np.ndarray], *, frames_per_group: int, groups: int, size: int, short_side: int
) -> dict[str, np.ndarray]:
    def pick(num_frames: int) -> np.ndarray:
        return frame_indices(num_frames, frames_per_group, groups)

    errors, infos = [], []
    for path in batch["video_path"]:
        try:
            info = probe(
                str(path)
            )  # reads the last frame too: catches files cut short behind an intact index
            frames = read_sampled_frames(str(path), pick, cache_path=None, short_side=short_side, info=info)
            eval_transform(frames, size)
            errors.append("")
        except VideoError as e:
            info = VideoInfo(0, 0.0, 0, 0)
            errors.append(e.reason)
        infos.append(info)
    out = {"video_path": batch["video_path"], "error": np.asarray(errors, dtype=object)}
    return out | {k: np.asarray([getattr(i, k) for i in infos]) for k in INFO_COLUMNS}


def train_dataset(data: PreparedData, config: DataConfig, frames_per_group: int, split: str = "train"):
    """One row per (video, caption) pair: video_index, frames (T*G, 3, S, S) uint8, tokens (77,) int32.

    Iterating it again re-executes it: a fresh shuffle and fresh random frames and crops every epoch.
    """
    import ray.data

    rows = _tokenized(data.splits[split].captions.drop_columns(["video_id"]))
    return (
        ray.data.from_arrow(_blocks(rows, config.decode_batch_size))
        .random_shuffle()
        .map_batches(
            decode_batch,
            batch_size=config.decode_batch_size,
            fn_kwargs=decode_options(config, frames_per_group, _cache_path(data), train=True),
            **DECODE_PLACEMENT,
        )
    )


def eval_dataset(data: PreparedData, config: DataConfig, frames_per_group: int, split: str):
    """One row per video, in video_index order: video_index, frames (T*G, 3, S, S) uint8, fixed positions."""
    import ray.data

    rows = data.splits[split].videos.drop_columns(["video_id"])
    return ray.data.from_arrow(_blocks(rows, config.decode_batch_size)).map_batches(
        decode_batch,
        batch_size=config.decode_batch_size,
        fn_kwargs=decode_options(config, frames_per_group, _cache_path(data), train=False),
        **DECODE_PLACEMENT,
    )


def decode_options(config: DataConfig, frames_per_group: int, cache_path: str | None, *, train: bool) -> dict:
    """`decode_batch`'s options for training or evaluation frames: every path that decodes uses these."""
    return {
        "frames_per_group": frames_per_group,
        "groups": config.train_groups if train else config.eval_groups,
        "size": config.image_size,
        "short_side": config.cache_short_side,
        "train": train,
        "cache_path": cache_path,
        "crop_scale": tuple(config.train_crop_scale),
        "flip_p": config.train_flip_p,
    }


def _tokenized(captions: pa.Table) -> pa.Table:
    """`caption` replaced by its CLIP tokens, (77,) int32 a row: tokenized once here, on the driver, rather
    than by the decoding tasks of every epoch, which then need neither the tokenizer nor open_clip."""
    from ray.data.extensions import ArrowTensorArray

    from model.factory import tokenize

    tokens = tokenize(captions["caption"].to_pylist()).numpy().astype(np.int32)
    return captions.drop_columns(["caption"]).append_column("tokens", ArrowTensorArray.from_numpy(tokens))


def _cache_path(data: PreparedData) -> str | None:
    return str(data.cache.path) if data.cache else None


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    # Several small blocks, so that decoding fans out over tasks instead of one task per dataset.
    return [table.slice(i, rows_per_block) for i in range(0, max(len(table), 1), rows_per_block)]
