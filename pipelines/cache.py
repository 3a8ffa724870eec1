"""Preprocessing cache: every video decoded once, at a reduced frame rate and short side, into Parquet shards.

Later epochs and later runs sample their frames from the cache instead of the raw files. Layout:

    <cache_dir>/<key>/shard-00000.parquet ...   one row group per video: its frames, JPEG or raw uint8
    <cache_dir>/<key>/index.parquet             video_path -> shard, row group, frame count, or error
    <cache_dir>/<key>/meta.json                 the parameters it was built with

The key hashes the source videos (path, size, mtime) and the cache parameters, so a changed video or a
changed parameter gives a new key (a rebuild) while an unchanged source is reused across runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from pipelines.config import DataConfig
from pipelines.decode import DECODE_PLACEMENT
from pipelines.video import VideoError, file_identity, open_video

CACHE_VERSION = 1
_INDEX = "index.parquet"
_META = "meta.json"


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    hit: bool  # True: an existing cache was reused
    videos: int
    bad: list[dict]  # {"video": path, "error": reason} for videos that could not be decoded


def _params(config: DataConfig) -> dict:
    return {
        "version": CACHE_VERSION,
        "fps": config.cache_fps,
        "short_side": config.cache_short_side,
        "format": config.cache_format,
    }


def cache_key(video_paths: list[str], config: DataConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(_params(config), sort_keys=True).encode())
    for path in sorted(set(video_paths)):
        size, mtime = file_identity(path)
        h.update((f"{path}\0{size}\0{mtime}\n" if size >= 0 else f"{path}\0missing\n").encode())
    return h.hexdigest()[:20]


def build_cache(video_paths: list[str], config: DataConfig) -> CacheInfo:
    """Decode every video into a cache under `config.cache_dir`, or reuse the one built from the same source.

    Runs on the connected Ray cluster: one Ray Data task per `decode_batch_size` videos writes one shard.
    """
    import ray.data

    if not config.cache_dir:
        raise ValueError("data.cache_dir is not set: nothing to build")
    videos = sorted(set(video_paths))
    final = Path(config.cache_dir) / cache_key(videos, config)
    if (final / _INDEX).is_file():
        return _info(final, hit=True)
    # Build beside the final folder and rename at the end: a crash never leaves a half cache that looks whole.
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    step = config.decode_batch_size
    blocks = [pa.table({"video_path": videos[i : i + step]}) for i in range(0, len(videos), step)]
    index = (
        ray.data.from_arrow(blocks)
        .map_batches(
            _write_shard,
            batch_size=step,
            fn_kwargs={"out_dir": str(staging), "config": config},
            **DECODE_PLACEMENT,
        )
        .to_arrow_refs()
    )
    pq.write_table(pa.concat_tables(ray.get(index)), staging / _INDEX)
    (staging / _META).write_text(json.dumps(_params(config) | {"videos": len(videos)}, indent=1))
    try:
        staging.rename(final)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return _info(final, hit=False)


def _info(path: Path, hit: bool) -> CacheInfo:
    index = pq.read_table(path / _INDEX).to_pylist()
    bad = [{"video": r["video_path"], "error": r["error"]} for r in index if r["error"]]
    return CacheInfo(path=path, hit=hit, videos=len(index), bad=bad)


def _write_shard(batch: dict[str, np.ndarray], *, out_dir: str, config: DataConfig) -> dict[str, np.ndarray]:
    shard = f"shard-{uuid.uuid4().hex[:12]}.parquet"
    rows, index = [], {"video_path": [], "shard": [], "row_group": [], "num_frames": [], "error": []}
    for path in batch["video_path"]:
        try:
            frames = _decode_reduced(str(path), config)
        except VideoError as e:
            index_row = (path, "", -1, 0, e.reason)
        else:
            index_row = (path, shard, len(rows), len(frames), "")
            rows.append(_encode(frames, config.cache_format))
        for key, value in zip(index, index_row, strict=True):
            index[key].append(value)
    if rows:
        schema = pa.schema([("frames", pa.list_(pa.binary())), ("height", pa.int32()), ("width", pa.int32())])
        with pq.ParquetWriter(Path(out_dir) / shard, schema) as writer:
            for row in rows:  # one row group per video: a reader fetches exactly one video
                writer.write_table(pa.Table.from_pylist([row], schema=schema))
    return {
        k: np.asarray(v, dtype=object if k in ("video_path", "shard", "error") else np.int64)
        for k, v in index.items()
    }


def _decode_reduced(path: str, config: DataConfig) -> np.ndarray:
    video = open_video(path, short_side=config.cache_short_side)
    step = max(1, round(video.fps / config.cache_fps)) if video.fps > 0 else 1
    return video.read(np.arange(0, video.num_frames, step))


def _encode(frames: np.ndarray, fmt: str) -> dict:
    height, width = frames.shape[1:3]
    if fmt == "jpeg":
        chw = torch.from_numpy(frames).permute(0, 3, 1, 2)
        data = [bytes(e.numpy()) for e in encode_jpeg(list(chw), quality=90)]
    else:
        data = [f.tobytes() for f in frames]
    return {"frames": data, "height": height, "width": width}


class CacheReader:
    """Random access to one video's cached frames; decodes only the frames asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = pq.read_table(self.path / _INDEX).to_pylist()
        self._where = {r["video_path"]: r for r in index}
        self.format = json.loads((self.path / _META).read_text())["format"]

    def num_frames(self, video_path: str) -> int:
        return self._entry(video_path)["num_frames"]

    def read(self, video_path: str, indices: np.ndarray) -> np.ndarray:
        entry = self._entry(video_path)
        row = pq.ParquetFile(self.path / entry["shard"]).read_row_group(entry["row_group"]).to_pylist()[0]
        picked = [row["frames"][i] for i in indices]
        if self.format == "jpeg":
            tensors = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in picked])
            return torch.stack(tensors).permute(0, 2, 3, 1).numpy()
        shape = (row["height"], row["width"], 3)
        return np.stack([np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in picked])

    def _entry(self, video_path: str) -> dict:
        entry = self._where.get(video_path)
        if entry is None:
            raise VideoError(video_path, "not in the preprocessing cache")
        if entry["error"]:
            raise VideoError(video_path, entry["error"])
        return entry


@lru_cache(maxsize=4)
def open_cache(path: str) -> CacheReader:
    """One reader per process and cache: the index is read once per decode worker, not once per batch."""
    return CacheReader(path)
