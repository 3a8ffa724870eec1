"""Video decoding throughput: the Ray Data pipeline against bare readers, and the cache against raw files.

On the same synthetic H.264 mp4s at each resolution, every method measured in the same run (these machines
are shared and noisy), interleaved, best of --repeats:

  (a) the evaluation path on local Ray with every core: `prepare_data` (its scan timed on its own), then
      `eval_dataset` iterated to completion: 2 groups of T frames (`frame_indices`), decord with the decoder
      scaling to `cache_short_side`, eval_transform to `image_size`; once per --batch-sizes value;
  (b) the "ideal" baseline: a multiprocessing Pool, one process per core, each video decord VideoReader +
      get_batch of the same indices + the same eval_transform;
  (c) OpenCV seek-per-frame as the official Prompt Switch / X-Pool loaders read videos (cap.set
      CAP_PROP_POS_FRAMES + cap.read per index), same indices and transform, same Pool;
  (d) one training epoch (`train_dataset`: T frames, random crops, shuffled) from the raw files against
      from the preprocessing cache, for each cache format; the cache build timed on its own.

Diagnostics that explain the gaps: the pipeline's own per-video code in the Pool (no Ray); a Ray Data run
with a do-nothing UDF (the fixed cost); a timeline of the pipeline's Ray tasks; and a one-process table of
each reader's CPU per video, with the header read of `open_video(short_side=...)` (training skips it: the
scan's size rides along) and (b) with its indices in decode order. Every timed row also reports the CPU
per video of this benchmark's processes (driver, Pool, all of Ray) and the load from everything else on
the machine during the run.

    .venv/bin/python bench/decode.py [--videos 48,16] [--resolutions 240,720] [--seconds 10] [--frames 6]
        [--batch-sizes 4,8] [--gop SECONDS] [--repeats 2] [--cpu-videos 4] [--workdir DIR] [--keep]
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
import psutil
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
    real residuals and motion vectors: about 0.45 Mbit/s at 240p and 3-4 Mbit/s at 720p (crf 23).
    """
    import cv2

    from pipelines.synthetic import all_specs, render

    rng = np.random.default_rng(index)
    specs = all_specs()
    pan = max(1, height // 240)  # pixels per frame: the same apparent speed at every resolution
    wide = width + pan * num_frames
    coarse = rng.integers(0, 256, (height // 16 + 2, wide // 16 + 2, 3), dtype=np.uint8)
    texture = cv2.resize(coarse, (wide, height), interpolation=cv2.INTER_CUBIC) // 2 + 64
    grain = rng.integers(-24, 25, (height, wide, 1), dtype=np.int16)
    texture = np.clip(texture.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    small = render(specs[index % len(specs)], num_frames, max(32, height // 4))  # drawn small: cheap
    left = (width - height) // 2
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        out[t] = texture[:, t * pan : t * pan + width]
        shape = cv2.resize(small[t], (height, height), interpolation=cv2.INTER_NEAREST)
        mask = (shape != 30).any(-1)  # render() paints everything but the shape a flat grey 30
        out[t, :, left : left + height][mask] = shape[mask]
    return out


@contextlib.contextmanager
def fast_x264(keyint: int | None):
    """Let write_video's libx264 use its SIMD code, at the common crf 23 / preset veryfast.

    write_video turns x264's assembly off for byte-identical files across runs, which makes 720p encoding
    several times slower; this benchmark needs the same files for every method within one run, not across
    runs. `keyint` (frames) replaces write_video's one key frame a second. Only this process's encoder
    options change, and only inside the block.
    """
    import pipelines.synth as synth

    saved = synth._X264_OPTIONS
    synth._X264_OPTIONS = {"crf": "23", "preset": "veryfast", "threads": "1"}
    if keyint:
        synth._X264_OPTIONS["x264-params"] = f"keyint={keyint}:scenecut=0"
    try:
        yield
    finally:
        synth._X264_OPTIONS = saved


def _write_one(job: tuple) -> None:
    from pipelines.synth import write_video

    path, index, width, height, num_frames, fps, keyint = job
    partial_path = Path(path).with_suffix(".part")  # renamed when whole: a crash never leaves a short file
    with fast_x264(keyint):
        write_video(partial_path, synthetic_frames(index, width, height, num_frames), fps)
    os.replace(partial_path, path)


def generate(folder: Path, count: int, width: int, height: int, args, pool) -> list[str]:
    """The videos in `folder`, written in parallel; files already there (from --workdir --keep) are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    num_frames = round(args.seconds * args.fps)
    keyint = round(args.gop * args.fps) if args.gop else None
    tag = f"{width}x{height}_{num_frames}f_{args.fps}fps_gop{keyint or args.fps}"
    paths = [str(folder / f"v{i:03d}_{tag}.mp4") for i in range(count)]
    jobs = [(p, i, width, height, num_frames, args.fps, keyint) for i, p in enumerate(paths)]
    list(pool.imap_unordered(_write_one, [j for j in jobs if not Path(j[0]).is_file()], chunksize=1))
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


# -------------------------------------------------------------- per-video work of the Pool baselines
# Each returns the (F, 3, S, S) uint8 frames, so the Pool ships them back as the pipeline delivers its own.


def _pool_init() -> None:
    # Ray runs each task with OMP_NUM_THREADS=1 (torch: 1 thread); match it, one thread per process.
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def bare_decord(path: str, frames: int, decode_order: bool = False) -> np.ndarray:
    import decord

    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)  # the pipeline's decoder threads too
    idx = frame_indices(len(vr), frames, EVAL_GROUPS)
    if not decode_order:
        return eval_transform(vr.get_batch(idx.tolist()).asnumpy(), IMAGE_SIZE)
    # Diagnostic: the same frames asked for in file order, then put back in frame_indices' group-major order.
    order = np.argsort(idx, kind="stable")
    decoded = vr.get_batch(idx[order].tolist()).asnumpy()
    return eval_transform(decoded[np.argsort(order)], IMAGE_SIZE)


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
    """What the decode task does per eval video, without Ray: open_video(short_side) + read + transform."""
    from pipelines.dataset import read_sampled_frames
    from pipelines.sampling import frame_indices
    from pipelines.transforms import eval_transform

    def pick(n: int) -> np.ndarray:
        return frame_indices(n, frames, EVAL_GROUPS)

    return eval_transform(read_sampled_frames(path, pick, cache_path=None, short_side=IMAGE_SIZE), IMAGE_SIZE)


def header_size(path: str) -> tuple[int, int]:
    """The extra work of open_video(short_side=...) without `info`: its size from the container header."""
    from pipelines.video import _header_size

    return _header_size(path)


def per_video_cpu_ms(paths: list[str], frames: int, cv_threads: int) -> dict[str, float]:
    """CPU ms per video of each reader in this one process: the fastest of 3 tries of each video, averaged.

    The least noisy view on a shared machine: outside load adds waiting to wall time, hardly any CPU time.
    """
    readers = {
        "(b) bare decord": partial(bare_decord, frames=frames),
        "(b) with the indices in decode order": partial(bare_decord, frames=frames, decode_order=True),
        "pipeline reader: (a)'s work per video": partial(pipeline_reader, frames=frames),
        "  of which reading its size from the header": header_size,
        "(c) OpenCV seek per frame": partial(opencv_seek, frames=frames, threads=cv_threads),
    }
    out = {}
    for name, fn in readers.items():
        fastest = []
        for path in paths:
            tries = []
            for _ in range(3):
                start = time.process_time()
                fn(path)
                tries.append(time.process_time() - start)
            fastest.append(min(tries))
        out[name] = 1000 * statistics.mean(fastest)
    return out


# ------------------------------------------------------------------------------------------------ timing


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _our_cpu_s() -> float:
    """CPU seconds of this process and all its descendants: the Pool, and Ray's GCS, raylet and workers."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process may end while we look
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@dataclass
class Sample:
    wall: float
    cpu: float  # this benchmark's processes
    other: float  # everything else on the machine, in CPU seconds


def measure(fn) -> tuple[Sample, object]:
    ours, busy, start = _our_cpu_s(), _machine_busy_s(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    ours = _our_cpu_s() - ours
    return Sample(wall, ours, max(0.0, _machine_busy_s() - busy - ours)), result


@dataclass
class Timing:
    label: str
    videos: int
    samples: list[Sample] = field(default_factory=list)

    def add(self, fn):
        sample, result = measure(fn)
        self.samples.append(sample)
        return result

    @property
    def best(self) -> Sample:  # the least disturbed run: outside load only ever adds time
        return min(self.samples, key=lambda s: s.wall)

    @property
    def rate(self) -> float:
        return self.videos / self.best.wall

    @property
    def cpu_per_video(self) -> float:
        return statistics.median(s.cpu for s in self.samples) / self.videos

    @property
    def other_cores(self) -> float:
        return statistics.mean(s.other / s.wall for s in self.samples)

    def row(self, ref: Timing, flip: bool = False) -> str:
        runs = " / ".join(f"{s.wall:.2f}" for s in self.samples)
        ratio = ref.best.wall / self.best.wall if flip else self.rate / ref.rate
        return (
            f"| {self.label:46s} | {runs:13s} | {self.rate:8.1f} | {ratio:6.2f} | "
            f"{self.cpu_per_video * 1000:12.0f} | {self.other_cores:18.2f} |"
        )


HEADER = (
    "| {:46s} | wall s (runs) | videos/s | {:>6s} | CPU ms/video | other load (cores) |\n"
    "|{}|---------------|---------:|-------:|------------:|-------------------:|"
)


def pool_run(pool, fn, paths: list[str]) -> list:
    return list(pool.imap(fn, paths, chunksize=1))  # chunks of 1: no slow video holds others up


def iterate(ds) -> int:
    """Consume a dataset as a trainer would (numpy batches), and count its rows."""
    return sum(len(b["video_index"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy"))


def _passthrough(batch: dict) -> dict:
    return batch


def _import_pipeline(batch: dict) -> dict:
    import pipelines.dataset  # noqa: F401  (torch, torchvision, open_clip, decord: about 5 s in a new process)

    return batch


def ray_floor(rows: pa.Table, batch_size: int, shuffle: bool, udf=_passthrough):
    """The block layout (and for training the shuffle) of the pipeline's datasets, with a do-nothing UDF."""
    import ray.data

    ds = ray.data.from_arrow([rows.slice(i, batch_size) for i in range(0, len(rows), batch_size)])
    if shuffle:
        ds = ds.random_shuffle()
    return ds.map_batches(udf, batch_size=batch_size)


def _traced_decode(batch: dict, **options) -> dict:
    """The pipeline's decode UDF, stamped with where and when it ran (a diagnostic)."""
    from pipelines.decode import decode_batch as udf

    start, cpu = time.time(), time.process_time()
    out = udf(batch, **options)
    stamp = [os.getpid(), start, time.time(), time.process_time() - cpu]
    out["trace"] = np.tile(np.asarray(stamp, dtype=np.float64), (len(out["video_index"]), 1))
    return out


def ray_timeline(data, config, frames: int) -> str:
    """Run the eval dataset's tasks once more, traced: how long each worker sat idle between its tasks."""
    from pipelines.dataset import decode_options

    rows = data.splits["test"].videos.drop_columns(["video_id"])  # as eval_dataset: with the scan's info
    options = decode_options(config, frames, str(data.cache.path) if data.cache else None, train=False)
    ds = ray_floor(rows, config.decode_batch_size, shuffle=False, udf=partial(_traced_decode, **options))
    start = time.time()
    tasks = {tuple(t) for b in ds.iter_batches(batch_size=None) for t in b["trace"].tolist()}
    wall = time.time() - start
    gaps = []
    for pid in {t[0] for t in tasks}:
        mine = sorted(t for t in tasks if t[0] == pid)  # by start time
        gaps += [b[1] - a[2] for a, b in zip(mine, mine[1:], strict=False)]
    run = sum(t[2] - t[1] for t in tasks)
    return (
        f"Ray timeline of (a), decode_batch_size={config.decode_batch_size}: {len(tasks)} tasks on "
        f"{len({t[0] for t in tasks})} workers in {wall:.2f} s; between a worker's tasks it sat idle "
        f"{statistics.median(gaps) if gaps else 0:.2f} s (median), {sum(gaps):.2f} worker-s in all; "
        f"tasks ran {run:.2f} worker-s, {sum(t[3] for t in tasks):.2f} of them on a CPU"
    )


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_read_ms(data, paths: list[str], frames: int) -> float:
    """ms of one CacheReader.read of `frames` random frames in this process: median over the videos of the
    fastest of 3 reads each (the page cache is warm: the cache was just written)."""
    from pipelines.cache import open_cache
    from pipelines.sampling import frame_indices

    reader = open_cache(str(data.cache.path))
    rng = np.random.default_rng(0)
    times = []
    for path in paths:
        idx = frame_indices(reader.num_frames(path), frames, 1, rng=rng)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            reader.read(path, idx)
            best = min(best, time.perf_counter() - start)
        times.append(best * 1000)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------- benchmark


def bench_resolution(args, height: int, count: int, workdir: Path, pool) -> list[str]:
    """Measure one resolution, print its tables, return its PASS/FAIL lines."""
    from pipelines.config import DataConfig
    from pipelines.dataset import eval_dataset, prepare_data, train_dataset

    width = int(height * 16 / 9) // 2 * 2  # 426x240, 1280x720
    res = f"{width}x{height}"
    print(f"\n## {res}: {count} videos, {args.seconds:g} s at {args.fps} fps", flush=True)
    gen_s, paths = measure(lambda: generate(workdir / f"{height}p", count, width, height, args, pool))
    mp4_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(
        f"videos ready in {gen_s.wall:.0f} s: {mp4_mb:.1f} MB, {mp4_mb * 8 / (count * args.seconds):.2f} "
        f"Mbit/s, a key frame every {args.gop or 1:g} s",
        flush=True,
    )
    manifest = write_bench_manifest(paths, workdir / f"manifest-{height}p.parquet")
    config = DataConfig(manifest=str(manifest), image_size=IMAGE_SIZE, cache_short_side=IMAGE_SIZE)
    T = args.frames

    # Every Pool function runs once per process first: start-up and imports are not decoding.
    warm = paths[: os.cpu_count()]
    for fn in (partial(bare_decord, frames=T), partial(pipeline_reader, frames=T), header_size):
        pool_run(pool, fn, warm)
    pool_run(pool, partial(opencv_seek, frames=T, threads=args.cv_threads), warm)

    scan = Timing("prepare_data scan (Ray: probe + eval frames)", count)
    evals = {bs: Timing(f"(a) pipeline eval, Ray, decode_batch_size={bs}", count) for bs in args.batch_sizes}
    bare = Timing("(b) bare decord, Pool", count)
    cv = Timing(f"(c) OpenCV seek per frame, Pool, {args.cv_threads} thread", count)
    reader = Timing("pipeline reader, Pool, no Ray", count)
    floors = {bs: Timing(f"Ray Data, no-op UDF, batch {bs}", count) for bs in args.batch_sizes}
    test_rows = pa.table({"video_index": np.arange(count)})
    for _ in range(args.repeats):  # interleaved: a burst of outside load hits every method alike
        data = scan.add(lambda: prepare_data(config, T))
        assert not data.report.bad, data.report.as_dict()
        for bs in args.batch_sizes:
            cfg = replace(config, decode_batch_size=bs)
            rows = evals[bs].add(lambda c=cfg, d=data: iterate(eval_dataset(d, c, T, "test")))
            assert rows == count, f"eval_dataset gave {rows} of {count} videos"
            floors[bs].add(lambda b=bs: iterate(ray_floor(test_rows, b, shuffle=False)))
        bare.add(lambda: pool_run(pool, partial(bare_decord, frames=T), paths))
        cv.add(lambda: pool_run(pool, partial(opencv_seek, frames=T, threads=args.cv_threads), paths))
        reader.add(lambda: pool_run(pool, partial(pipeline_reader, frames=T), paths))
    best_bs = min(args.batch_sizes, key=lambda bs: evals[bs].best.wall)
    best = evals[best_bs]
    timeline = ray_timeline(data, replace(config, decode_batch_size=best_bs), T)

    print(f"\n### {res}: evaluation path, {EVAL_GROUPS} x {T} frames -> {IMAGE_SIZE} px, {count} videos\n")
    print(HEADER.format("method", "vs (b)", "-" * 48))
    for t in (scan, *evals.values(), bare, cv, reader, *floors.values()):
        print(t.row(bare))
    print(f"\n{timeline}")
    # One Pool process (torch on one thread, as in every column) times each reader on a few videos.
    cpu_ms = pool.apply(per_video_cpu_ms, (paths[: args.cpu_videos], T, args.cv_threads))
    print(f"\n| CPU per video, 1 process, {args.cpu_videos} videos, fastest of 3 | ms/video | vs (b) |")
    print("|---------------------------------------------------|---------:|-------:|")
    for name, ms in cpu_ms.items():
        print(f"| {name:49s} | {ms:8.1f} | {ms / cpu_ms['(b) bare decord']:6.2f} |")
    ref = bare_decord(paths[0], T).astype(np.int16)  # OpenCV seeks by time stamp: a wrong frame shows here
    diff_cv = np.abs(opencv_seek(paths[0], T, 1).astype(np.int16) - ref).mean()
    diff_pipe = np.abs(pipeline_reader(paths[0], T).astype(np.int16) - ref).mean()
    print(
        f"frames of the first video against (b), mean |difference| in uint8 levels: (c) {diff_cv:.2f}, "
        f"pipeline (decoder-scaled) {diff_pipe:.2f}"
    )

    # (d) a training epoch from the raw files against each cache format, at the tuned decode_batch_size.
    train_cfg = replace(config, decode_batch_size=best_bs)
    epochs = {"files": Timing("(d) train epoch from the raw files", count)}
    builds, cached = {}, {}
    for fmt in args.cache_formats:
        cache_cfg = replace(train_cfg, cache_dir=str(workdir / f"cache-{height}p-{fmt}"), cache_format=fmt)
        shutil.rmtree(cache_cfg.cache_dir, ignore_errors=True)  # a kept cache would make the build free
        builds[fmt] = Timing(f"cache build, {fmt} (prepare_data)", count)
        cached[fmt] = builds[fmt].add(lambda c=cache_cfg: prepare_data(c, T))
        assert not cached[fmt].cache.hit and not cached[fmt].report.bad
        epochs[fmt] = Timing(f"(d) train epoch from the {fmt} cache", count)
    train_floor = Timing(f"Ray Data, shuffle + no-op UDF, batch {best_bs}", count)
    train_rows = pa.table({"video_index": np.arange(count)})
    for _ in range(args.repeats):
        for key, timing in epochs.items():
            prepared = data if key == "files" else cached[key]
            rows = timing.add(lambda p=prepared: iterate(train_dataset(p, train_cfg, T)))
            assert rows == count, f"train_dataset gave {rows} of {count} samples"
        train_floor.add(lambda: iterate(ray_floor(train_rows, best_bs, shuffle=True)))

    raw = epochs["files"]
    print(f"\n### {res}: one training epoch, {T} frames, decode_batch_size={best_bs}, {count} samples\n")
    print(HEADER.format("method", "vs raw", "-" * 48))
    for t in (*epochs.values(), train_floor, *builds.values()):
        print(t.row(raw, flip=True))
    print(f"\n| cache format | size MB (mp4s: {mp4_mb:.1f}) | read of {T} frames, ms | build / epoch saved |")
    print("|--------------|---------------:|----------------------:|--------------------:|")
    for fmt, prepared in cached.items():
        saved = raw.best.wall - epochs[fmt].best.wall
        payoff = f"{builds[fmt].best.wall / saved:.1f} epochs" if saved > 0 else "never"
        print(
            f"| {fmt:12s} | {folder_bytes(prepared.cache.path) / 1e6:14.1f} | "
            f"{cache_read_ms(prepared, paths, T):21.1f} | {payoff:>19s} |"
        )
        shutil.rmtree(prepared.cache.path.parent, ignore_errors=True)

    def verdict(ok: bool, text: str) -> str:
        return f"{'PASS' if ok else 'FAIL'} [{res}]: {text}"

    a_b, a_c = best.rate / bare.rate, best.rate / cv.rate
    cpu_b, cpu_c = (t.cpu_per_video / best.cpu_per_video for t in (bare, cv))  # noise-robust view, not judged
    lines = [
        verdict(
            a_b >= A_VS_B,
            f"(a) {best.rate:.1f} videos/s = {a_b:.2f}x (b) bare decord (want >= {A_VS_B}x); "
            f"CPU per video (b)/(a) = {cpu_b:.2f}",
        ),
        verdict(
            a_c >= A_VS_C,
            f"(a) = {a_c:.2f}x (c) OpenCV seek per frame (want >= {A_VS_C}x); "
            f"CPU per video (c)/(a) = {cpu_c:.2f}",
        ),
    ]
    for fmt in cached:
        speedup = raw.best.wall / epochs[fmt].best.wall
        lines.append(
            verdict(
                speedup >= CACHE_VS_RAW,
                f"(d) an epoch from the {fmt} cache is {speedup:.2f}x "
                f"faster than from the raw files (want >= {CACHE_VS_RAW}x)",
            )
        )
    print()
    print("\n".join(lines), flush=True)
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=ints, default=[48, 16], help="videos per resolution (one, or one each)")
    p.add_argument("--resolutions", type=ints, default=[240, 720], help="frame heights (16:9 frames)")
    p.add_argument("--seconds", type=float, default=10.0, help="video length")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--gop", type=float, default=0, help="seconds between key frames (0: write_video's 1 s)")
    p.add_argument("--frames", type=int, default=6, help="frames per group (eval: 2 groups)")
    p.add_argument("--batch-sizes", type=ints, default=[4, 8], help="decode_batch_size values for (a)")
    p.add_argument("--cache-formats", type=lambda s: s.split(","), default=["jpeg", "raw"])
    p.add_argument("--cv-threads", type=int, default=1, help="FFmpeg threads per OpenCV capture")
    p.add_argument("--cpu-videos", type=int, default=4, help="videos in the one-process CPU table")
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the fastest counts")
    p.add_argument("--workdir", type=Path, help="where videos and caches go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the videos (a later --workdir run reuses them)")
    args = p.parse_args(argv)
    if len(args.videos) == 1:
        args.videos *= len(args.resolutions)
    if len(args.videos) != len(args.resolutions):
        p.error("--videos takes one count, or one per resolution")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2
    import decord
    import ray
    import torch
    from ray.data import DataContext

    from orchestrator.ray_runtime import connect

    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="decode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count()
    print(
        f"{cpus} CPUs; torch {torch.__version__}, decord {decord.__version__}, OpenCV {cv2.__version__}, "
        f"ray {ray.__version__}; workdir {workdir}",
        flush=True,
    )
    connect(num_cpus=cpus, object_store_mb=1024, dashboard=False)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" line per dataset
    # Ray starts its workers lazily and each imports the pipeline (about 5 s here): once, before timing.
    warm = measure(
        lambda: iterate(
            ray_floor(pa.table({"video_index": np.arange(4 * cpus)}), 1, False, udf=_import_pipeline)
        )
    )[0]
    print(f"Ray workers started and warmed in {warm.wall:.1f} s", flush=True)
    # spawn, not fork: this process runs Ray's threads, which a forked child would inherit half-copied.
    pool = mp.get_context("spawn").Pool(cpus, initializer=_pool_init)
    verdicts: list[str] = []
    try:
        for height, count in zip(args.resolutions, args.videos, strict=True):
            verdicts += bench_resolution(args, height, count, workdir, pool)
    finally:
        pool.close()
        pool.join()
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nSummary\n" + "\n".join(verdicts))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
