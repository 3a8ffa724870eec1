"""The embedding job's throughput against a bare loop of the same model over the same decoded frames.

    .venv/bin/python bench/embed.py [--model tiny] [--videos 144] [--batch-size 16] [--rounds 2]
        [--size 96] [--frames 48] [--seed 0] [--json PATH]

Set-up (not timed): a synthetic dataset of --videos mp4s (`pipelines.synth`), its Parquet frame cache
(`pipelines.cache.build_cache`, as `promptswitch data cache` makes it), a checkpoint of --model (random init,
seeded: the cost of a forward pass does not depend on the weights), and local Ray.

Then, alternated for --rounds rounds so that outside load hits both alike:

  - bare: every video's evaluation frames read from the cache into memory once (not timed), then the model
    alone over them in batches of --batch-size, on as many threads as one actor of the job has CPUs (Ray
    gives an actor with one CPU one thread). Videos/s of the model and nothing else: the ceiling.
  - job: `library.embed.embed_library` into a fresh library from the same cache, with its default actor
    pool (one actor per two CPUs, one per GPU): videos/s from the end of the listing to the last shard
    written, as the job reports it, and the share of the actors' time spent in the model (the rest is the
    pool's start-up, Ray Data's and the model's loading, and waiting for frames).

Printed: the medians and the ratio job / bare (expected from the cache on 2 cores: at least 0.8), and how
fast one process reads and transforms the frames from the cache: where that is slower than the model, the
job is bound by it, whatever its overhead.
With a GPU, the actor runs the model in bf16 and the bare loop too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from library.embed import EmbedConfig, embed_library, pool  # noqa: E402
from library.source import resolve  # noqa: E402
from model import ModelConfig, build_model, normalize_frames  # noqa: E402
from orchestrator.config import RunConfig, TrainConfig  # noqa: E402
from orchestrator.config_io import dump_config  # noqa: E402
from orchestrator.training import checkpoint  # noqa: E402
from orchestrator.training.step import autocast_for, build_optimisation  # noqa: E402
from pipelines.cache import build_cache, open_cache  # noqa: E402
from pipelines.config import DataConfig  # noqa: E402
from pipelines.sampling import frame_indices  # noqa: E402
from pipelines.synth import write_synthetic_dataset  # noqa: E402
from pipelines.transforms import eval_transform  # noqa: E402


def set_up(args, work: Path) -> tuple[RunConfig, Path, list[str], str]:
    """(run config, checkpoint folder, video paths, cache path)."""
    manifest = write_synthetic_dataset(
        work / "data", args.videos, args.seed, frames=args.frames, size=args.size
    )
    model_config = ModelConfig(name=args.model, frames_per_group=6)
    size = model_config.image_size
    data = DataConfig(
        manifest=str(manifest), image_size=size, cache_short_side=size, cache_dir=str(work / "cache")
    )
    run = RunConfig(
        name="bench", model=model_config, data=data, train=TrainConfig(batch_size=args.batch_size)
    )
    torch.manual_seed(args.seed)
    model = build_model(run.model)
    ckpt = work / "ckpt"
    checkpoint.save(
        ckpt, model, build_optimisation(model, run.train, 10), checkpoint.TrainState(), dump_config(run)
    )
    videos = sorted(str(v) for v in (work / "data" / "videos").glob("*.mp4"))
    return run, ckpt, videos, str(build_cache(videos, data).path)


def decoded_frames(run: RunConfig, videos: list[str], cache_path: str) -> torch.Tensor:
    """(N, F, 3, S, S) uint8: the frames the job decodes, the same positions and transform."""
    cache = open_cache(cache_path)
    frames = []
    for path in videos:
        picked = frame_indices(cache.num_frames(path), run.model.frames_per_group, run.data.eval_groups)
        frames.append(eval_transform(cache.read(path, picked), run.model.image_size))
    return torch.from_numpy(np.stack(frames))


@torch.no_grad()
def bare(model, frames: torch.Tensor, batch_size: int, device, autocast) -> float:
    start = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        with autocast():
            model.encode_video(normalize_frames(frames[i : i + batch_size].to(device))).float().cpu()
    return len(frames) / (time.perf_counter() - start)


def job(run_ckpt: Path, videos: Path, out: Path, cache_dir: str, batch_size: int) -> dict:
    manifest = embed_library(
        resolve(str(run_ckpt)), videos, out, EmbedConfig(batch_size=batch_size, cache_dir=cache_dir)
    )
    return manifest["last_job"] | {"rows": manifest["counts"]["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, ViT-B-32, ...")
    parser.add_argument("--videos", type=int, default=144, help="at most 144 (the synthetic world)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=96, help="the generated videos' frame size")
    parser.add_argument("--frames", type=int, default=48, help="frames per generated video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from orchestrator.ray_runtime import connect

    connect(dashboard=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run, ckpt, videos, cache_path = set_up(args, work)
        started = time.perf_counter()
        frames = decoded_frames(run, videos, cache_path)
        decode_rate = len(videos) / (time.perf_counter() - started)  # one process, one pass
        model = build_model(run.model).eval().to(device)
        checkpoint.load_weights(ckpt, model)
        autocast = autocast_for("bf16" if device.type == "cuda" else "fp32", device)
        # An actor gets as many threads as it has CPUs (one); so does the bare loop.
        actor_cpus = 1
        torch.set_num_threads(actor_cpus)
        bare(model, frames[: args.batch_size], args.batch_size, device, autocast)  # warm-up
        bares, jobs = [], []
        for r in range(args.rounds):
            bares.append(bare(model, frames, args.batch_size, device, autocast))
            jobs.append(
                job(ckpt, work / "data" / "videos", work / f"lib{r}", str(work / "cache"), args.batch_size)
            )
            assert jobs[-1]["rows"] == args.videos, jobs[-1]
            last = jobs[-1]
            print(
                f"round {r + 1}: bare {bares[-1]:.1f} videos/s, job {last['videos_per_second']:.1f} videos/s "
                f"(model busy {last['model_busy_fraction']:.0%} of {last['actors']} actor(s))",
                flush=True,
            )
        actors, _ = pool(EmbedConfig())
    result = {
        "command": "bench/embed.py " + shlex.join(sys.argv[1:]),
        "model": args.model,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "cpus": os.cpu_count(),
        "videos": args.videos,
        "frames_per_video": int(frames.shape[1]),
        "image_size": run.model.image_size,
        "actors": actors,
        "bare_videos_per_second": statistics.median(bares),
        "job_videos_per_second": statistics.median(j["videos_per_second"] for j in jobs),
        "job_model_busy_fraction": statistics.median(j["model_busy_fraction"] for j in jobs),
        "job_seconds": [j["seconds"] for j in jobs],
        "cache_decode_videos_per_second": decode_rate,
        "ray": ray.__version__,
        "torch": torch.__version__,
    }
    result["ratio"] = result["job_videos_per_second"] / result["bare_videos_per_second"]
    print(
        f"\n{args.model}, {args.videos} videos of {result['frames_per_video']} frames at "
        f"{run.model.image_size} px, from the cache, {result['cpus']} CPUs, {actors} actor(s):\n"
        f"  bare loop (model only, {actor_cpus} thread): {result['bare_videos_per_second']:8.1f} videos/s\n"
        f"  embedding job:                         {result['job_videos_per_second']:8.1f} videos/s  "
        f"(model busy {result['job_model_busy_fraction']:.0%})\n"
        f"  ratio job / bare: {result['ratio']:.2f} (expected >= 0.8)\n"
        f"  reading and transforming the frames from the cache, one process: {decode_rate:.1f} videos/s"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
