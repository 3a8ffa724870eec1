"""The embedding job: every video of a manifest or a folder embedded once, into a library (Ray Data).

Videos are probed and cut into windows (one per short clip, sliding windows for long videos), decoded with
evaluation's frame positions and transforms (`pipelines.decode.decode_batch`, the cache when given), and
embedded by a pool of actors that each hold the model: one GPU each in bf16 where there are GPUs, CPU actors
otherwise. The driver streams the embeddings into shards as they arrive, a video's windows together, so it
never holds the library and a killed job keeps its finished shards. Running again embeds only what is new
or changed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from library import store
from library.source import ModelSource
from model.config import ConfigError, ModelConfig, require
from orchestrator.config import RunConfig
from orchestrator.training.checkpoint import CONFIG_FILE, MODEL_FILE
from pipelines.decode import DECODE_PLACEMENT, INFO_COLUMNS, decode_batch
from pipelines.manifest import check_manifest
from pipelines.video import file_identity

LISTING_CHUNK = 10_000  # videos listed, checked against the library and handed to Ray Data at a time
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
FORMAT_VERSION = 1


class LibraryMismatch(ConfigError):
    """The library was built by another model, or with other sampling, than this job's."""


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 16  # videos per model call in each actor
    actors: int | None = None  # None: one per GPU, else one per two CPUs (decoding needs the others)
    dtype: str = "float32"  # of the stored embeddings; float16 halves the library
    segment_seconds: float | None = None  # long videos in windows this long; None: one row per video
    stride_seconds: float | None = None  # between window starts; None: segment_seconds (no overlap)
    shard_rows: int = 1024  # rows per shard: what a killed job can lose
    split: str | None = None  # of a manifest; None: every split
    cache_dir: str | None = None  # the preprocessing cache (`promptswitch data cache`), when there is one
    index: str = "exact"  # "approximate": also build an approximate index (large libraries)
    index_factory: str | None = None  # FAISS index_factory string; None: library.index's default for the size

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.actors is None or self.actors >= 1, "actors", self.actors, ">= 1 or null")
        require(self.dtype in ("float32", "float16"), "dtype", self.dtype, "float32, float16")
        seg, stride = self.segment_seconds, self.stride_seconds
        require(seg is None or seg > 0, "segment_seconds", seg, "a number > 0 or null")
        require(stride is None or (seg and stride > 0), "stride_seconds", stride, "> 0, with segment_seconds")
        require(self.shard_rows >= 1, "shard_rows", self.shard_rows, "an integer >= 1")
        require(self.split in (None, "train", "val", "test"), "split", self.split, "train, val, test or null")
        require(self.index in ("exact", "approximate"), "index", self.index, "exact, approximate")
        require(
            self.index_factory is None or self.index == "approximate",
            "index_factory",
            self.index_factory,
            "null unless index=approximate",
        )


def iter_videos(videos: Path, split: str | None = None, chunk_rows: int = LISTING_CHUNK):
    """Tables of at most `chunk_rows` videos (video_id, video_path, size, mtime_ns) of a manifest (one row
    per video, in its first caption's order) or a folder (walked in name order), read as they are listed."""
    pairs = _walk(videos, videos) if videos.is_dir() else _manifest_videos(videos, split)
    while chunk := list(itertools.islice(pairs, chunk_rows)):
        identities = [file_identity(p) for _, p in chunk]
        yield pa.table(
            {
                "video_id": [video_id for video_id, _ in chunk],
                "video_path": [str(p) for _, p in chunk],
                "size": pa.array([size for size, _ in identities], pa.int64()),
                "mtime_ns": pa.array([mtime for _, mtime in identities], pa.int64()),
            }
        )


def _walk(folder: Path, root: Path):
    """(id, path) of every video under `folder`, the id its path below `root`."""
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():
            yield from _walk(path, root)
        elif entry.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            yield str(path.relative_to(root)), path


def _manifest_videos(manifest: Path, split: str | None):
    """(id, path) of a manifest's videos, read a row group at a time. Only a hash of each path seen is
    kept, to list a video with several captions once."""
    check_manifest(manifest)
    seen: set[int] = set()
    columns = ["video_id", "video_path", "split"]
    for batch in pq.ParquetFile(manifest).iter_batches(columns=columns):
        for video_id, path, part in zip(*(batch[c].to_pylist() for c in columns), strict=True):
            if (split is None or part == split) and hash(path) not in seen:
                seen.add(hash(path))
                yield video_id, Path(path)


def embed_library(
    model: ModelSource, videos: Path, out: Path, config: EmbedConfig, *, rebuild: bool = False
) -> dict:
    """Embed the videos not yet in the library at `out` (all of them with `rebuild`); returns the manifest."""
    import ray

    settings = _settings(model, config)
    existing = store.read_manifest(out)
    if existing and rebuild:
        shutil.rmtree(out)
        existing = None
    if existing:
        _check_same(existing, model, settings, out)
    _write_model(model, out)
    manifest = _manifest(model, settings, existing)
    store.write_manifest(out, manifest)  # first, so that a killed job's library names its model

    # The listing goes to the object store a chunk at a time, less what the library already holds: the
    # driver keeps one key per library row and a hash per listed path, never the listing or any frames.
    known = store.identity_keys(out)
    listed, pending, todo = 0, 0, []
    for chunk in iter_videos(videos, config.split):
        listed += len(chunk)
        new = chunk.filter(pc.invert(pc.is_in(store.identity_key(chunk), value_set=known)))
        if len(new):
            index = pa.array(range(pending, pending + len(new)), pa.int64())
            todo.append(ray.put(new.append_column("video_index", index)))
            pending += len(new)
    print(f"{listed} videos, {listed - pending} already in {out}, {pending} to embed")
    started, embedded, rows_written, bad, model_seconds = time.perf_counter(), 0, 0, [], 0.0
    actors, _ = pool(config)
    if pending:
        writer = _ShardWriter(out, store.schema(model.run.model.embed_dim, config.dtype), config.shard_rows)
        cache = _cache(todo, model, config)
        dataset = embedding_dataset(todo, model.run, model.weights, config, cache_path=cache)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            model_seconds += pc.sum(batch["model_seconds"]).as_py()
            for video in writer.add(batch):
                embedded += 1
                if video["error"]:
                    bad.append({"video": video["video_path"], "error": video["error"]})
        rows_written = writer.close()
    elapsed = time.perf_counter() - started
    manifest["counts"] = store.counts(out) | {"embedded_now": embedded, "rows_now": rows_written}
    manifest["index"] = _build_index(out, config, manifest["settings"]["dimension"])
    manifest["last_job"] = {
        "videos_per_second": embedded / elapsed if elapsed > 0 and embedded else 0.0,
        "seconds": elapsed,
        "actors": actors,
        # What share of the actors' time went to the model (the rest: start-up and waiting for frames).
        "model_busy_fraction": model_seconds / (elapsed * actors) if elapsed > 0 and pending else 0.0,
        "bad": bad,
        "ray": ray.__version__,
    }
    store.write_manifest(out, manifest)
    return manifest


def _cache(todo: list, model: ModelSource, config: EmbedConfig) -> str | None:
    """The preprocessing cache of these videos in `cache_dir` (built, or found built), if one is asked for.
    A cache is named by the whole list of its videos, so here the driver does hold every path."""
    import ray

    from pipelines.cache import build_cache

    if not config.cache_dir:
        return None
    paths = [p for ref in todo for p in ray.get(ref)["video_path"].to_pylist()]
    return str(
        build_cache(paths, replace(model.run.data, cache_dir=config.cache_dir)).path
    )


class _ShardWriter:
    """Collects a video's windows until all have come, then writes shards of about `shard_rows` rows."""

    def __init__(self, out: Path, schema: pa.Schema, shard_rows: int):
        self.out, self.schema, self.shard_rows = out, schema, shard_rows
        self.partial: dict[str, list[dict]] = {}
        self.ready: list[dict] = []
        self.written = 0

    def add(self, batch: pa.Table):
        for row in batch.to_pylist():
            windows = self.partial.setdefault(row["video_path"], [])
            windows.append(row)
            if len(windows) == row["windows"]:
                del self.partial[row["video_path"]]
                self.ready.extend(sorted(windows, key=lambda r: r["start_s"]))
                yield windows[0]
        if len(self.ready) >= self.shard_rows:
            self._flush()

    def close(self) -> int:
        if self.ready:
            self._flush()
        return self.written

    def _flush(self) -> None:
        rows = [{k: r[k] for k in self.schema.names} for r in self.ready]
        store.write_shard(self.out, pa.Table.from_pylist(rows, schema=self.schema))
        self.written += len(rows)
        self.ready = []


def embedding_dataset(
    rows: pa.Table | list,
    run: RunConfig,
    weights,
    config: EmbedConfig,
    *,
    cache_path: str | None = None,
    precision: str = "bf16",
    use_gpu: bool | None = None,
):
    """A Ray Data dataset of `rows` (a table, or object refs of tables: video_path, video_index and whatever
    else rides along) embedded by `run`'s model.

    `weights` is the weights file or a Ray Train checkpoint (which each actor reads). Without
    `segment_seconds` a row is one whole video, probed first unless the rows carry the scan's
    `INFO_COLUMNS`; with it, each video's windows. Failed videos come out as rows with their `error`.
    `precision` applies on GPUs (CPU actors run fp32); `use_gpu=None` uses GPUs where the cluster has any.
    """
    import ray
    import ray.data

    from pipelines.dataset import decode_options

    actors, gpus = pool(config, use_gpu)
    run = replace(run, model=replace(run.model, pretrained=None))  # the checkpoint's weights replace CLIP's
    decode = decode_options(run.data, run.model.frames_per_group, cache_path, train=False) | {
        "keep_failed": True
    }
    step = config.batch_size
    listing = ray.data.from_arrow_refs(rows) if isinstance(rows, list) else ray.data.from_arrow(rows)
    return (
        # Blocks of a model batch: the decoding tasks fan out over the cluster's CPUs.
        listing.repartition(target_num_rows_per_block=step)
        .map_batches(
            _windows,
            batch_size=step,
            fn_kwargs={
                "segment": config.segment_seconds,
                "stride": config.stride_seconds,
                "cache_path": cache_path,
                "cache_fps": run.data.cache_fps,
            },
            **DECODE_PLACEMENT,
        )
        .map_batches(decode_batch, batch_size=step, fn_kwargs=decode, **DECODE_PLACEMENT)
        .map_batches(
            _Embedder,
            fn_constructor_kwargs={
                "model": run.model,
                "weights": weights if not isinstance(weights, Path) else str(weights),
                "dtype": config.dtype,
                "precision": precision,
            },
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
        )
    )


def pool(config: EmbedConfig, use_gpu: bool | None = None) -> tuple[int, int]:
    """(actors, the cluster's GPUs it uses): actors as configured, else one per GPU, else one per two CPUs
    (the rest decode)."""
    import ray

    resources = ray.cluster_resources()  # once: each read is a round trip to the cluster
    gpus = int(resources.get("GPU", 0)) if use_gpu is not False else 0
    return config.actors or gpus or max(1, int(resources.get("CPU", 2)) // 2), gpus


def _windows(
    batch: dict, *, segment: float | None, stride: float | None, cache_path: str | None, cache_fps: float
) -> dict:
    """One row per window of each video, with its time range and the video's size for decoding; a video
    that cannot be opened becomes one row with its error. Rows that carry the scan's size are not probed,
    and with the cache the video's length is the cache's (at its frame rate): the raw file is not opened."""
    from pipelines.cache import open_cache
    from pipelines.video import VideoError, VideoInfo, probe

    def info_of(i: int, path: str) -> VideoInfo:
        if INFO_COLUMNS[0] in batch:
            return VideoInfo(*(batch[k][i].item() for k in INFO_COLUMNS))
        if cache_path:
            return VideoInfo(open_cache(cache_path).num_frames(path), cache_fps, 0, 0)
        return probe(path)

    out: dict[str, list] = {k: [] for k in (*batch, *INFO_COLUMNS, "window_start", "window_end", "start_s",
                                             "end_s", "windows", "error")}  # fmt: skip
    for i, path in enumerate(batch["video_path"]):
        try:
            info = info_of(i, str(path))
            error = ""
        except VideoError as e:
            info, error = None, e.reason
        duration = info.num_frames / info.fps if info and info.fps > 0 else 0.0
        spans = _spans(duration, segment, stride) if info else [(0.0, 0.0)]
        for start, end in spans:
            for k in batch:
                if k not in INFO_COLUMNS:
                    out[k].append(batch[k][i])
            for k in INFO_COLUMNS:
                out[k].append(getattr(info, k) if info else 0)
            whole = duration or 1.0
            out["window_start"].append(start / whole if duration else 0.0)
            out["window_end"].append(end / whole if duration else 1.0)
            out["start_s"].append(start)
            out["end_s"].append(end)
            out["windows"].append(len(spans))
            out["error"].append(error)
    return {k: np.asarray(v) if k != "error" else np.asarray(v, dtype=object) for k, v in out.items()}


def _spans(duration: float, segment: float | None, stride: float | None) -> list[tuple[float, float]]:
    """Windows of `segment` seconds every `stride` seconds covering the video; the whole of a short one."""
    if not segment or duration <= segment:
        return [(0.0, duration)]
    stride = stride or segment
    starts = list(np.arange(0.0, duration - segment + 1e-9, stride))
    if starts[-1] + segment < duration - 1e-9:  # the tail: a last window that ends with the video
        starts.append(duration - segment)
    return [(float(s), float(s) + segment) for s in starts]


class _Embedder:
    """An actor of the pool: the model, on its GPU with autocast at `precision`, or on the CPU in fp32."""

    def __init__(self, model: ModelConfig, weights, dtype: str, precision: str):
        import contextlib

        import torch

        from model import build_model
        from orchestrator.training import checkpoint
        from orchestrator.training.step import autocast_for

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_model(model)
        # A weights file (an MLflow model's need not be called model.safetensors), or a training run's
        # checkpoint, wherever its storage is.
        with weights.as_directory() if not isinstance(weights, str) else contextlib.nullcontext(weights) as w:
            checkpoint.load_weights(Path(w), self.model)
        self.model.eval().to(self.device)
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.autocast = autocast_for(precision if self.device.type == "cuda" else "fp32", self.device)

    def __call__(self, batch: dict) -> pa.Table:
        import torch

        from model import normalize_frames

        started = time.perf_counter()
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        dim = self.model.config.embed_dim
        emb = np.zeros((len(ok), dim), np.float32)
        if ok.any():
            frames = torch.from_numpy(np.asarray(batch["frames"][ok])).to(self.device)
            with torch.no_grad(), self.autocast():
                emb[ok] = self.model.encode_video(normalize_frames(frames)).float().cpu().numpy()
        columns = {k: batch[k] for k in batch if k not in ("frames", *INFO_COLUMNS)}
        # The actor's time in the model, spread over its rows: the rest of the job's time it waited for data.
        columns["model_seconds"] = np.full(len(ok), (time.perf_counter() - started) / max(len(ok), 1))
        values = pa.array(emb.astype(self.dtype).ravel())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, dim)
        columns["error"] = pa.array([str(e) for e in batch["error"]], pa.string())
        return pa.table(columns)


def _build_index(out: Path, config: EmbedConfig, dim: int) -> dict | None:
    """With index=approximate: an index over every searchable row, its recall@10 against exact search on
    held-out library vectors, saved beside the shards and tied to them by their fingerprint."""
    from library import index as faiss_index

    if config.index == "exact":
        return None
    _, vectors = store.searchable(out, dim)
    spec = faiss_index.IndexSpec(kind="approximate", factory=config.index_factory)
    started = time.perf_counter()
    index = faiss_index.build_index(vectors, spec)
    seconds = time.perf_counter() - started
    recall = faiss_index.held_out_recall(vectors, index, k=10, queries=min(1000, len(vectors) - 1))
    faiss_index.save_index(index, out / store.INDEX_DIR / store.INDEX_FILE)
    print(f"approximate index {spec.factory or faiss_index.default_factory(*vectors.shape)}: "
          f"recall@10 {recall:.3f} against exact search on held-out library vectors")  # fmt: skip
    return {
        "factory": spec.factory or faiss_index.default_factory(*vectors.shape),
        "search_params": faiss_index.default_search_params(index) | spec.search_params,
        "rows": len(vectors),
        "recall_at_10": recall,
        "build_seconds": seconds,
        "bytes": faiss_index.index_bytes(index),
        "fingerprint": store.fingerprint(out),
    }


def _settings(model: ModelSource, config: EmbedConfig) -> dict:
    """What decides a row's embedding besides the weights: a library keeps one of each."""
    return {
        "frames_per_group": model.run.model.frames_per_group,
        "eval_groups": model.run.data.eval_groups,
        "image_size": model.run.model.image_size,
        "segment_seconds": config.segment_seconds,
        "stride_seconds": config.stride_seconds or config.segment_seconds,
        "dtype": config.dtype,
        "dimension": model.run.model.embed_dim,
    }


def _check_same(existing: dict, model: ModelSource, settings: dict, out: Path) -> None:
    if existing["model"]["digest"] != model.digest:
        raise LibraryMismatch(
            f"the library {out} was embedded by another model ({existing['model']['source']}, digest "
            f"{existing['model']['digest']}); this job's is {model.source} ({model.digest}). Use another "
            "--out, or --rebuild to embed the whole library again with this model"
        )
    before = existing["settings"]
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise LibraryMismatch(f"the library {out} was embedded with other settings ({detail}); use --rebuild")


def _write_model(model: ModelSource, out: Path) -> None:
    folder = out / store.MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MODEL_FILE).exists():
        shutil.copyfile(model.weights, folder / MODEL_FILE)
    from orchestrator.config_io import dump_config

    (folder / CONFIG_FILE).write_text(dump_config(model.run))


def _manifest(model: ModelSource, settings: dict, existing: dict | None) -> dict:
    from importlib.metadata import version

    import faiss
    import open_clip
    import torch

    return {
        "format": FORMAT_VERSION,
        "model": model.description,
        "settings": settings,
        "counts": (existing or {}).get("counts", {}),
        "versions": {
            "promptswitch": version("promptswitch"),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "faiss": faiss.__version__,
        },
    }
