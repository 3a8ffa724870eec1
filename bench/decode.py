"""Video decoding throughput: the Ray Data pipeline against bare readers, and the cache against raw files.

On the same synthetic H.264 mp4s at each resolution, measured in the same run (these machines are noisy):

  (a) the evaluation path on local Ray with every core: `prepare_data` (its scan timed on its own), then
      `eval_dataset` iterated to completion: 2 groups of T frames, decord with the decoder scaling to
      `cache_short_side`, eval_transform to `image_size`; for each `--batch-sizes` (decode_batch_size);
  (b) the "ideal" baseline: a multiprocessing Pool, one process per core, each video decord VideoReader +
      get_batch of the same indices + the same eval_transform;
  (c) OpenCV seek-per-frame as the official Prompt Switch / X-Pool loaders read videos (cap.set
      CAP_PROP_POS_FRAMES + cap.read per index), same indices and transform, same Pool;
  (d) one training epoch (`train_dataset`: T frames, random crops, shuffled) from the raw files against
      from the preprocessing cache, for each cache format (jpeg, raw); the cache build timed on its own.

Two diagnostics explain the gaps: the pipeline's own per-video code (`read_sampled_frames` + eval_transform)
in the same Pool without Ray, the extra open + first-frame decode that `open_video(short_side=...)` does
to learn the native size, and the fixed cost of a Ray Data execution with a do-nothing UDF.

    .venv/bin/python bench/decode.py [--videos 48] [--resolutions 240,720] [--seconds 10] [--frames 6]
        [--batch-sizes 4,8] [--repeats 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

A_VS_B = 0.8  # (a) at least 0.8x the videos/s of bare decord
A_VS_C = 2.0  # (a) at least 2x the videos/s of OpenCV seek-per-frame
CACHE_VS_RAW = 3.0  # a training epoch from the cache at least 3x faster than from the raw files
EVAL_GROUPS = 2
IMAGE_SIZE = 224

# ------------------------------------------------------------------------------------------------ videos


def synthetic_frames(index: int, width: int, height: int, num_frames: int) -> np.ndarray:
    """(num_frames, height, width, 3) uint8: a `pipelines.synthetic` shape over a textured, panning scene.

    The flat synthetic videos compress to almost nothing, which would make decoding unrealistically cheap;
    a textured background (smooth blobs plus fine grain) that pans a few pixels a frame gives the encoder
    real residuals and motion vectors: about 0.55 Mbit/s at 240p and 3-4 Mbit/s at 720p (crf 23).
    """
    import cv2

    from pipelines.synthetic import all_specs, render

    rng = np.random.default_rng(index)
    specs = all_specs()
    pan = max(1, height // 240)  # pixels per frame, the same apparent speed at every resolution
    wide = width + pan * num_frames
    coarse = rng.integers(0, 256, (height // 16 + 2, wide // 16 + 2, 3), dtype=np.uint8)
    texture = cv2.resize(coarse, (wide, height), interpolation=cv2.INTER_CUBIC) // 2 + 64
    grain = rng.integers(-24, 25, (height, wide, 1), dtype=np.int16)
    texture = np.clip(texture.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    small = render(specs[index % len(specs)], num_frames, max(32, height // 4))  # upscaled: cheap to draw
    left = (width - height) // 2
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        out[t] = texture[:, t * pan : t * pan + width]
        shape = cv2.resize(small[t], (height, height), interpolation=cv2.INTER_NEAREST)
        mask = (shape != 30).any(-1)  # render() paints everything but the shape a flat grey 30
        out[t, :, left : left + height][mask] = shape[mask]
    return out


@contextlib.contextmanager
def fast_x264():
    """Let write_video's libx264 use its SIMD code (and the common crf 23, preset veryfast).

    write_video turns x264's assembly off for byte-identical files across runs, which makes 720p encoding
    several times slower; this benchmark needs the same files for every method within one run, not across
    runs. Only this process's encoder options change, and only inside the block.
    """
    import pipelines.synth as synth

    saved = synth._X264_OPTIONS
    synth._X264_OPTIONS = {"crf": "23", "preset": "veryfast", "threads": "1"}
    try:
        yield
    finally:
        synth._X264_OPTIONS = saved


def _write_one(job: tuple[str, int, int, int, int, int]) -> None:
    from pipelines.synth import write_video

    path, index, width, height, num_frames, fps = job
    partial_path = Path(path).with_suffix(".part")  # renamed when whole: a crash never leaves a short file
    with fast_x264():
        write_video(partial_path, synthetic_frames(index, width, height, num_frames), fps)
    os.replace(partial_path, path)


def generate(folder: Path, count: int, width: int, height: int, num_frames: int, fps: int, pool) -> list[str]:
    """The videos in `folder`, written in parallel; files already there (from --workdir --keep) are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"v{i:03d}_{width}x{height}_{num_frames}f_{fps}fps.mp4") for i in range(count)]
    jobs = [(p, i, width, height, num_frames, fps) for i, p in enumerate(paths) if not Path(p).is_file()]
    list(pool.imap_unordered(_write_one, jobs, chunksize=1))
    return paths


def write_bench_manifest(paths: list[str], out: Path) -> Path:
    """Each video once in "test" (the eval path) and once in "train" (one caption: an epoch is N samples)."""
    from pipelines.manifest import write_manifest

    rows = {"video_id": [], "video_path": [], "caption": [], "split": []}
    for split in ("test", "train"):
        for i, path in enumerate(paths):
            rows["video_id"].append(f"v{i:03d}")
            rows["video_path"].append(path)
            rows["caption"].append(f"synthetic video number {i}")
            rows["split"].append(split)
    write_manifest(pa.table(rows), out)
    return out


# ------------------------------------------------------------- per-video work of the Pool baselines
# Each returns the (F, 3, S, S) uint8 frames, so the Pool ships them back as the pipeline delivers its own.


def _pool_init() -> None:
    # Ray runs each task with OMP_NUM_THREADS=1; match it, so that every column uses one thread per core.
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def bare_decord(path: str, frames: int) -> np.ndarray:
    import decord

    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)  # the pipeline's decoder threads too
    idx = frame_indices(len(vr), frames, EVAL_GROUPS)
    return eval_transform(vr.get_batch(idx.tolist()).asnumpy(), IMAGE_SIZE)


def opencv_seek(path: str, frames: int, threads: int) -> np.ndarray:
    """The official loaders' reader (X-Pool's video_capture.py, which Prompt Switch reuses)."""
    import cv2

    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    try:
        idx = frame_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), frames, EVAL_GROUPS)
        out = []
        for i in idx:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"OpenCV could not read frame {i} of {path}")
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return eval_transform(np.stack(out), IMAGE_SIZE)


def pipeline_reader(path: str, frames: int) -> np.ndarray:
    """What `_decode_batch` does for one eval video, without Ray: open_video(short_side) + read + transform."""
    from pipelines.dataset import read_sampled_frames
    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform

    def pick(n: int) -> np.ndarray:
        return frame_indices(n, frames, EVAL_GROUPS)

    return eval_transform(read_sampled_frames(path, pick, cache_path=None, short_side=IMAGE_SIZE), IMAGE_SIZE)


def first_frame(path: str) -> int:
    """The extra work of open_video(short_side=...) without `info`: open the file, decode frame 0."""
    from pipelines.video import decode_frames

    return decode_frames(path, [0]).shape[2]


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    label: str
    videos: int
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:  # the least disturbed run: other load on a shared machine only adds time
        return min(self.seconds)

    @property
    def rate(self) -> float:
        return self.videos / self.best

    def runs(self) -> str:
        return " / ".join(f"{s:.2f}" for s in self.seconds)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def pool_run(pool, fn, paths: list[str]):
    # chunksize 1: a slow video never holds up a queue of others behind it
    return list(pool.imap(fn, paths, chunksize=1))


def _passthrough(batch: dict) -> dict:
    return batch


def _import_pipeline(batch: dict) -> dict:
    import pipelines.dataset  # noqa: F401  (torch, torchvision, open_clip, decord: about 5 s in a new process)

    return batch


def iterate(ds) -> int:
    """Consume a dataset as a trainer would (numpy batches), and count its rows."""
    return sum(len(b["video_index"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy"))


def ray_floor(rows: pa.Table, batch_size: int, shuffle: bool, udf=_passthrough):
    """The same block layout and (for training) shuffle as the pipeline's datasets, with a do-nothing UDF."""
    import ray.data

    blocks = [rows.slice(i, batch_size) for i in range(0, len(rows), batch_size)]
    ds = ray.data.from_arrow(blocks)
    if shuffle:
        ds = ds.random_shuffle()
    return ds.map_batches(udf, batch_size=batch_size)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_read_ms(data, paths: list[str], frames: int) -> float:
    """Median ms for one CacheReader.read of `frames` random frames, in this process (why one format wins)."""
    from pipelines.cache import open_cache
    from pipelines.sampling import frame_indices

    reader = open_cache(str(data.cache.path))
    rng = np.random.default_rng(0)
    times = []
    for path in paths:
        idx = frame_indices(reader.num_frames(path), frames, 1, rng=rng)
        times.append(timed(lambda p=path, i=idx: reader.read(p, i))[0] * 1000)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------- benchmark


def bench_resolution(args, height: int, count: int, workdir: Path, pool) -> dict:
    from pipelines.config import DataConfig
    from pipelines.dataset import eval_dataset, prepare_data, train_dataset

    width = int(height * 16 / 9) // 2 * 2  # 426x240, 1280x720
    num_frames = round(args.seconds * args.fps)
    print(f"\n## {width}x{height}: {count} videos of {num_frames} frames at {args.fps} fps", flush=True)
    gen_s, paths = timed(lambda: generate(workdir / f"{height}p", count, width, height, num_frames, args.fps, pool))
    mp4_bytes = sum(os.path.getsize(p) for p in paths)
    mbps = mp4_bytes * 8 / (count * args.seconds) / 1e6
    print(f"videos ready in {gen_s:.0f} s: {mp4_bytes / 1e6:.1f} MB, {mbps:.2f} Mbit/s", flush=True)
    manifest = write_bench_manifest(paths, workdir / f"manifest-{height}p.parquet")
    config = DataConfig(manifest=str(manifest), image_size=IMAGE_SIZE, cache_short_side=IMAGE_SIZE)
    T = args.frames

    # Every Pool function runs once per process first: start-up and imports are not decoding.
    warm = paths[: os.cpu_count()]
    for fn in (partial(bare_decord, frames=T), partial(pipeline_reader, frames=T), first_frame):
        pool_run(pool, fn, warm)
    pool_run(pool, partial(opencv_seek, frames=T, threads=args.cv_threads), warm)

    # prepare_data without a cache scans every video (probe + eval frames) on Ray: timed on its own.
    scan = Timing("prepare_data scan (Ray)", count)
    for _ in range(args.repeats):
        seconds, data = timed(lambda: prepare_data(config, T))
        scan.seconds.append(seconds)
    assert not data.report.bad, data.report.as_dict()

    test_rows = data.splits["test"].videos.select(["video_index", "video_path"])
    evals = {bs: Timing(f"(a) pipeline eval, Ray, decode_batch_size={bs}", count) for bs in args.batch_sizes}
    floors = {bs: Timing(f"Ray Data floor: no-op UDF, batch {bs}", count) for bs in args.batch_sizes}
    bare = Timing("(b) bare decord, Pool", count)
    cv = Timing(f"(c) OpenCV seek per frame, Pool ({args.cv_threads} thread)", count)
    reader = Timing("pipeline reader, Pool, no Ray", count)
    opens = Timing("  of which open + frame 0 (size probe)", count)
    for _ in range(args.repeats):  # interleaved, so that a burst of outside load hits every method alike
        for bs in args.batch_sizes:
            cfg = replace(config, decode_batch_size=bs)
            seconds, rows = timed(lambda c=cfg: iterate(eval_dataset(data, c, T, "test")))
            assert rows == count, f"eval_dataset gave {rows} of {count} videos"
            evals[bs].seconds.append(seconds)
            floors[bs].seconds.append(timed(lambda b=bs: iterate(ray_floor(test_rows, b, shuffle=False)))[0])
        bare.seconds.append(timed(lambda: pool_run(pool, partial(bare_decord, frames=T), paths))[0])
        reader.seconds.append(timed(lambda: pool_run(pool, partial(pipeline_reader, frames=T), paths))[0])
        opens.seconds.append(timed(lambda: pool_run(pool, first_frame, paths))[0])
        cv_fn = partial(opencv_seek, frames=T, threads=args.cv_threads)
        cv.seconds.append(timed(lambda f=cv_fn: pool_run(pool, f, paths))[0])
    best_bs = min(args.batch_sizes, key=lambda bs: evals[bs].best)

    # Same frames from every reader? OpenCV seeks by timestamp; a wrong frame would show as a large diff.
    ref = bare_decord(paths[0], T).astype(np.int16)
    agree = {
        "(c) OpenCV": np.abs(opencv_seek(paths[0], T, 1).astype(np.int16) - ref).mean(),
        "pipeline (decoder-scaled)": np.abs(pipeline_reader(paths[0], T).astype(np.int16) - ref).mean(),
    }

    # (d) an epoch of training data: raw files against each cache format, with the pipeline's tuned batch.
    train_cfg = replace(config, decode_batch_size=best_bs)
    train_rows = data.splits["train"].captions.select(["video_index", "video_path", "caption"])
    epochs = {"raw files": Timing("(d) train epoch from raw files", count)}
    builds, sizes, reads, cached = {}, {}, {}, {}
    for fmt in args.cache_formats:
        cache_cfg = replace(train_cfg, cache_dir=str(workdir / f"cache-{height}p-{fmt}"), cache_format=fmt)
        shutil.rmtree(cache_cfg.cache_dir, ignore_errors=True)  # a --keep'd cache would be a free build
        builds[fmt], cached[fmt] = timed(lambda c=cache_cfg: prepare_data(c, T))
        assert not cached[fmt].cache.hit and not cached[fmt].report.bad
        sizes[fmt] = folder_bytes(cached[fmt].cache.path)
        reads[fmt] = cache_read_ms(cached[fmt], paths, T)
        epochs[fmt] = Timing(f"(d) train epoch from {fmt} cache", count)
    train_floor = Timing(f"Ray Data floor: shuffle + no-op UDF, batch {best_bs}", count)
    for _ in range(args.repeats):
        for key, timing in epochs.items():
            prepared = data if key == "raw files" else cached[key]
            seconds, rows = timed(lambda p=prepared: iterate(train_dataset(p, train_cfg, T)))
            assert rows == count, f"train_dataset gave {rows} of {count} samples"
            timing.seconds.append(seconds)
        train_floor.seconds.append(timed(lambda: iterate(ray_floor(train_rows, best_bs, shuffle=True)))[0])
    for fmt in args.cache_formats:
        shutil.rmtree(cached[fmt].cache.path.parent, ignore_errors=True)

    return {
        "res": f"{width}x{height}",
        "height": height,
        "count": count,
        "mbps": mbps,
        "mp4_mb": mp4_bytes / 1e6,
        "scan": scan,
        "evals": evals,
        "floors": floors,
        "best_bs": best_bs,
        "bare": bare,
        "reader": reader,
        "opens": opens,
        "cv": cv,
        "agree": agree,
        "epochs": epochs,
        "train_floor": train_floor,
        "builds": builds,
        "sizes": sizes,
        "reads": reads,
    }


def report(r: dict, verdicts: list[str]) -> None:
    bare = r["bare"]
    best = r["evals"][r["best_bs"]]
    print(f"\n### {r['res']}, {r['count']} videos, {r['mbps']:.2f} Mbit/s, eval {EVAL_GROUPS} x 6 frames")
    print("\n| eval path (12 frames -> 224)                | s (runs)        | videos/s | vs (b) |")
    print("|---------------------------------------------|-----------------|---------:|-------:|")
    rows = [r["scan"], *r["evals"].values(), bare, r["cv"], r["reader"], r["opens"], *r["floors"].values()]
    for t in rows:
        print(f"| {t.label:43s} | {t.runs():15s} | {t.rate:8.1f} | {t.rate / bare.rate:6.2f} |")
    agree = ", ".join(f"{k} {v:.2f}" for k, v in r["agree"].items())
    print(f"\nmean |difference| of the first video's frames against (b), in uint8 levels: {agree}")

    raw = r["epochs"]["raw files"]
    print("\n| train epoch (6 frames, random crop)      | s (runs)        | videos/s | vs raw | build s | size MB |"
          " read ms |")
    print("|------------------------------------------|-----------------|---------:|-------:|--------:|--------:|"
          "--------:|")
    for key, t in [*r["epochs"].items(), ("floor", r["train_floor"])]:
        build = f"{r['builds'][key]:7.1f}" if key in r["builds"] else "      —"
        size = f"{r['sizes'][key] / 1e6:7.1f}" if key in r["sizes"] else f"{r['mp4_mb']:7.1f}" if key == "raw files" else "      —"
        read = f"{r['reads'][key]:7.1f}" if key in r["reads"] else "      —"
        print(f"| {t.label:40s} | {t.runs():15s} | {t.rate:8.1f} | {raw.best / t.best:6.2f} | {build} | {size} | {read} |")

    def verdict(ok: bool, text: str) -> None:
        line = f"{'PASS' if ok else 'FAIL'} [{r['res']}]: {text}"
        verdicts.append(line)

    a_b = best.rate / bare.rate
    verdict(a_b >= A_VS_B, f"(a) {best.rate:.1f} videos/s = {a_b:.2f}x (b) bare decord (want >= {A_VS_B})")
    a_c = best.rate / r["cv"].rate
    verdict(a_c >= A_VS_C, f"(a) = {a_c:.2f}x (c) OpenCV seek per frame (want >= {A_VS_C})")
    for fmt in r["builds"]:
        speedup = raw.best / r["epochs"][fmt].best
        verdict(speedup >= CACHE_VS_RAW, f"(d) {fmt} cache epoch {speedup:.2f}x faster than raw (want >= {CACHE_VS_RAW})")


def parse_args(argv=None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=ints, default=[48], help="videos per resolution: one count, or one each")
    p.add_argument("--resolutions", type=ints, default=[240, 720], help="frame heights; 16:9 frames")
    p.add_argument("--seconds", type=float, default=10.0, help="video length")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--frames", type=int, default=6, help="frames per group (eval: 2 groups)")
    p.add_argument("--batch-sizes", type=ints, default=[4, 8], help="decode_batch_size values for (a)")
    p.add_argument("--cache-formats", type=lambda s: s.split(","), default=["jpeg", "raw"])
    p.add_argument("--cv-threads", type=int, default=1, help="FFmpeg threads per OpenCV capture")
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best counts")
    p.add_argument("--workdir", type=Path, help="where videos and caches go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the videos (a later --workdir run reuses them)")
    args = p.parse_args(argv)
    if len(args.videos) == 1:
        args.videos *= len(args.resolutions)
    if len(args.videos) != len(args.resolutions):
        p.error("--videos takes one count or one per resolution")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2
    import decord
    import ray
    import torch
    from ray.data import DataContext

    from orchestrator.ray_runtime import connect

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="decode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count()
    print(f"{cpus} CPUs; torch {torch.__version__}, decord {decord.__version__}, OpenCV {cv2.__version__}, "
          f"ray {ray.__version__}; workdir {workdir}", flush=True)

    logging.getLogger("ray").setLevel(logging.WARNING)
    connect(num_cpus=cpus, object_store_mb=1024, dashboard=False)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" line per dataset
    # Ray starts its workers lazily and each imports the pipeline (about 5 s here): once, before timing.
    rows = pa.table({"video_index": np.arange(4 * cpus)})
    warm_s = timed(lambda: iterate(ray_floor(rows, 1, shuffle=False, udf=_import_pipeline)))[0]
    print(f"Ray workers started and warmed in {warm_s:.1f} s", flush=True)
    # spawn, not fork: this process runs Ray's threads, which a forked child would inherit half-copied.
    pool = mp.get_context("spawn").Pool(cpus, initializer=_pool_init)
    verdicts: list[str] = []
    start = time.perf_counter()
    try:
        for height, count in zip(args.resolutions, args.videos, strict=True):
            report(bench_resolution(args, height, count, workdir, pool), verdicts)
    finally:
        pool.close()
        pool.join()
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    for line in verdicts:
        print(line)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
