"""What Prompt Switch costs over plain CLIP at inference: FLOPs, CPU time, peak memory and added parameters.

Both sides see the same random frames: `encode_video` (prompt cube, switch, aggregation) against the
wrapped open_clip `clip.encode_image` on the same B*F images (its mean-pooling to a video is negligible).
Each figure comes with its ratio to that baseline, measured in the same run: these machines are noisy.

    .venv/bin/python bench/model_cost.py [--model ViT-B-32] [--frames 12] [--videos 1] [--repeats 25]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import create_model

FLOPS_LIMIT = 1.15  # at most +15 % FLOPs (the paper: about +12 % at 12 frames for ViT-B/32)
TIME_LIMIT = 1.20  # at most +20 % median CPU time


def build(args: argparse.Namespace):
    """The model in eval mode and two callables that encode the same seeded frames both ways."""
    model = create_model(args.model, caption_weight=0.0).eval()  # no caption head: inference cost only
    size = model.config.image_size
    frames = torch.randn(args.videos, args.frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = frames.flatten(0, 1)
    encoders = {"video": lambda: model.encode_video(frames), "image": lambda: model.clip.encode_image(images)}
    return model, encoders


@contextlib.contextmanager
def countable_kernels():
    """Route attention through plain matmuls so FlopCounterMode sees all of it.

    In eval mode nn.MultiheadAttention takes a fused fast path (_native_multi_head_attention) and the CPU
    SDPA kernel is a flash kernel; the counter has formulas for neither and would silently drop the
    attention projections and products. The arithmetic is the same; only its visibility changes.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), countable_kernels(), counter:
        fn()
    return counter.get_total_flops()


def time_interleaved(encoders: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per forward, A B A B ... so that noise from other processes hits both sides alike."""
    times = {name: [] for name in encoders}
    with torch.inference_mode():
        for _ in range(warmup):  # first calls pay for oneDNN primitive creation and allocator growth
            for fn in encoders.values():
                fn()
        for _ in range(repeats):
            for name, fn in encoders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def measure_memory(args: argparse.Namespace) -> None:
    """Child process: peak RSS increase (KiB) of the first forward, once the model and frames exist.

    It includes the one-time oneDNN / allocator / thread-pool setup, which both variants pay alike.
    """
    _, encoders = build(args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.inference_mode():
        encoders[args.measure_memory]()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)


def peak_memory(args: argparse.Namespace, runs: int = 3) -> dict[str, float]:
    """Median over `runs` fresh processes per variant, alternated, of the forward's peak RSS increase (KiB).

    A fresh process each time: ru_maxrss is a high-water mark that never goes down within a process. The
    median, because one process's allocator and thread-pool setup differs from the next by ~10 MiB.
    """
    peaks = {"video": [], "image": []}
    for _ in range(runs):
        for variant, found in peaks.items():
            cmd = [sys.executable, __file__, *cli_args(args), "--measure-memory", variant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            found.append(int(out.split()[-1]))
    return {variant: statistics.median(found) for variant, found in peaks.items()}


def cli_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--frames", str(args.frames), "--videos", str(args.videos)]


def verdict(ratio: float, limit: float, what: str) -> str:
    ok = "PASS" if ratio <= limit else "FAIL"
    return f"{ok}: {what} {ratio - 1:+.1%} (limit {limit - 1:+.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--frames", type=int, default=12, help="frames per video, a multiple of 6")
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25, help="timed forwards per variant")
    parser.add_argument("--measure-memory", choices=["video", "image"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        measure_memory(args)
        return

    script = [os.path.relpath(sys.executable), os.path.relpath(__file__)]
    command = shlex.join([*script, *cli_args(args), "--repeats", str(args.repeats)])
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")

    # Memory first, while this process is still small: a child inherits its parent's ru_maxrss through
    # exec, and a parent already holding a model would raise the child's starting high-water mark.
    memory = peak_memory(args)

    model, encoders = build(args)
    added = sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith(("clip.", "caption_head."))  # the caption head is training-only
    )
    flops = {name: count_flops(fn) for name, fn in encoders.items()}
    times = time_interleaved(encoders, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}

    frames = f"{args.videos} x {args.frames} frames"
    print(f"\n{args.model}, {frames}, median of {args.repeats} interleaved forwards")
    print(f"{'':25}{'encode_video':>14}{'clip.encode_image':>19}{'ratio':>8}")
    rows = [
        ("GFLOPs", flops["video"] / 1e9, flops["image"] / 1e9, "{:14.2f}{:19.2f}"),
        ("median CPU time (ms)", median["video"] * 1e3, median["image"] * 1e3, "{:14.0f}{:19.0f}"),
        ("peak RSS of 1st fwd (MiB)", memory["video"] / 1024, memory["image"] / 1024, "{:14.1f}{:19.1f}"),
    ]
    for label, video, image, fmt in rows:
        ratio = f"{video / image:8.3f}" if image > 0 else f"{'n/a':>8}"
        print(f"{label:25}" + fmt.format(video, image) + ratio)
    print(f"{'added params':25}{added / 1e6:13.3f}M  (prompt cube + prompt aggregation)")
    print()
    # How much the two sides moved together: a wide range means the machine was busy; rerun when it is not.
    pairs = sorted(v / i for v, i in zip(times["video"], times["image"], strict=True))
    print(f"per-pair time ratio: median {statistics.median(pairs):.3f}, range {pairs[0]:.3f}-{pairs[-1]:.3f}")
    print(verdict(flops["video"] / flops["image"], FLOPS_LIMIT, "FLOPs"))
    print(verdict(median["video"] / median["image"], TIME_LIMIT, "median CPU time"))


if __name__ == "__main__":
    main()
