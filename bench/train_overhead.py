"""Steps/s of the Ray Train loop against a plain single-process PyTorch loop, on the same in-memory batches.

What is measured is the cost of Ray Train's worker and loop machinery, not of the data pipeline:

  1. a fixed set of training batches is decoded once by the real pipeline (`prepare_data` + `train_dataset`,
     the demo's random frames and crops) and kept in memory as uint8 tensors;
  2. "plain": this process runs the training step over exactly those batches (cycled, same order);
  3. "ray": a `TorchTrainer` with num_workers=1 (one process, like the plain loop) whose
     worker function gets the same batches from the object store (`ray.put`) and runs the same step.

The step is the training loop's own, for one worker without gradient accumulation: `training/step.py`'s
`forward_losses`, `Optimisation.backward` and `Optimisation.step` (autocast, normalize_frames, forward,
backward, `.item()` of every loss part, clipping, AdamW, zero_grad, schedule, logit-scale clamp). The
Ray side wraps the model with `ray.train.torch.prepare_model` as the real loop does. Both sides build the
model from the same seed and use the same number of torch threads (set explicitly; the worker's default,
from Ray's OMP_NUM_THREADS, is printed too).

Timing: --warmup steps untimed, then --steps timed one by one; --rounds rounds, each running both sides,
the order alternating (plain, ray; ray, plain; ...) so that drift and outside load hit both alike. Reported:
steps/s per run, the ratio of the medians (ray / plain), per-round ratios, CPU seconds per step of the
looping process, and the fixed cost of a `fit()` (worker start, process group, teardown) outside the loop.

--gpu: when CUDA is available, the same comparison for ViT-B/32 at bf16 on one GPU in samples/s, then a
real `fit` (Ray Data pipeline included) on the synthetic videos at 224 px whose logged samples/s and
data-wait fraction (`Progress.step_metrics` in recipe.py) are printed; without CUDA it says skipped.

    .venv/bin/python bench/train_overhead.py [--steps 40] [--warmup 5] [--rounds 3] [--batches 8]
        [--batch-size 16] [--threads N] [--pipeline-steps 0] [--gpu] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from model import build_model  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.config_io import load_config  # noqa: E402
from orchestrator.training.step import autocast_for, build_optimisation, forward_losses  # noqa: E402

SCRATCH = ROOT / "configs" / "scratch.yaml"
GPU_OVERRIDES = [  # ViT-B/32 at 224 px, bf16, one GPU
    "model.name=ViT-B-32",
    "data.cache_short_side=224",
    "train.precision=bf16",
    "train.use_gpu=true",
]
BATCH_DTYPES = {"frames": torch.uint8, "tokens": torch.long, "video_index": torch.long}

# ------------------------------------------------------------------------------------------- the step


def make_state(run: RunConfig, total_steps: int, device: torch.device):
    """Model (seeded), optimisation and autocast as the training recipe builds them."""
    torch.manual_seed(run.train.seed)  # rank 0's seed in the real loop
    model = build_model(run.model)
    return model, build_optimisation(model, run.train, total_steps), autocast_for(run.train.precision, device)


def train_step(model, forward, opt, autocast, batch, device, grad_clip) -> dict:
    """One optimiser step of recipe.py's loop (grad_accum=1), on `forward` (the model or its DDP wrap)."""
    losses = forward_losses(forward, batch, device, autocast)
    opt.backward(losses["loss"])
    sums = {k: v.item() for k, v in losses.items()}
    opt.step(model, grad_clip)
    return sums


def timed_loop(run: RunConfig, batches: list[dict], device, warmup: int, steps: int, wrap=None) -> dict:
    """Build the state, run `warmup` + `steps` steps over `batches` (cycled); per-step times of the last."""
    model, opt, autocast = make_state(run, warmup + steps, device)
    forward = wrap(model) if wrap else model.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu0, start, busy0 = [], 0.0, 0.0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            cpu0, start, busy0 = time.process_time(), time.perf_counter(), _busy_cpu_seconds()
        tick = time.perf_counter()
        train_step(model, forward, opt, autocast, batches[i % len(batches)], device, run.train.grad_clip)
        if i >= warmup:
            times.append(time.perf_counter() - tick)  # .item() in the step synchronises a GPU
    sync()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {
        "wall": wall,
        "steps_per_s": steps / wall,
        "step_times": times,
        "cpu_per_step": cpu / steps,
        # CPU the rest of the machine used meanwhile, in cores: the noise gauge of this run.
        "other_cores": max(0.0, _busy_cpu_seconds() - busy0 - cpu) / wall,
        "threads": torch.get_num_threads(),
    }


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have been busy (every core), from /proc/stat via psutil."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def ray_worker(config: dict) -> None:
    """The Ray side's worker function: the same loop on the batches from the object store."""
    import ray
    import ray.train
    import ray.train.torch

    entered = time.time()  # wall clock, comparable with the driver's on one machine
    default_threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    run = config["run"]
    # Copies: the object store hands out read-only shared-memory views; the plain side reads private memory.
    batches = [{k: v.clone() for k, v in b.items()} for b in ray.get(config["batches"])]
    device = ray.train.torch.get_device()
    result = timed_loop(
        run, batches, device, config["warmup"], config["steps"], wrap=ray.train.torch.prepare_model
    )
    # What ray.train.report (metrics only, no checkpoint) costs; the real loop reports at every evaluation.
    tick = time.perf_counter()
    for i in range(config["reports"]):
        ray.train.report({"probe": i})
    result["report_s"] = time.perf_counter() - tick
    result["report_ms"] = 1000 * result["report_s"] / max(config["reports"], 1)
    result |= {"default_threads": default_threads, "omp_num_threads": omp, "entered": entered}
    result["left"] = time.time()
    # A file, not report(): Ray Train 2.x keeps a Result's metrics only when they come with a checkpoint.
    Path(config["out"]).write_text(json.dumps(result))


def run_ray(run: RunConfig, batches_ref, args, storage: Path, tag: str, cpus: float) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={
            "run": run,
            "batches": batches_ref,
            "warmup": args.warmup,
            "steps": args.steps,
            "threads": args.threads,
            "reports": args.reports,
            "out": str(storage / f"timing-{tag}.json"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1,
            use_gpu=run.train.use_gpu,
            resources_per_worker={"CPU": cpus} | ({"GPU": 1} if run.train.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(name=f"overhead-{tag}", storage_path=str(storage)),
    )
    start = time.time()
    trainer.fit()
    end = time.time()
    timing = json.loads((storage / f"timing-{tag}.json").read_text())
    timing |= {
        "fit_wall": end - start,
        "startup": timing["entered"] - start,
        "teardown": end - timing["left"],
    }
    return timing


# ------------------------------------------------------------------------------------------- batches


def decode_batches(run: RunConfig, count: int) -> list[dict]:
    """`count` training batches of run.train.batch_size pairs through the real pipeline, as uint8 tensors."""
    from pipelines.dataset import prepare_data, train_dataset

    data = prepare_data(run.data, run.model.frames_per_group)
    dataset = train_dataset(data, run.data, run.model.frames_per_group)
    batches = []
    while len(batches) < count:  # whole epochs: no streaming executor is left running in this process
        for batch in dataset.iter_torch_batches(
            batch_size=run.train.batch_size, drop_last=True, dtypes=BATCH_DTYPES
        ):
            if len(batches) < count:  # private copies, not views of Arrow or object-store buffers
                batches.append({k: batch[k].clone() for k in BATCH_DTYPES})
    return batches


# ------------------------------------------------------------------------------------------- comparison


def compare(run: RunConfig, args, device: torch.device, storage: Path, cpus: float, label: str) -> dict:
    import ray

    t0 = time.perf_counter()
    batches = decode_batches(run, args.batches)
    shape = tuple(batches[0]["frames"].shape)
    mib = sum(b["frames"].numel() for b in batches) / 2**20
    print(
        f"{label}: decoded {len(batches)} batches of frames {shape} uint8 ({mib:.0f} MiB) in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    ref = ray.put(batches)
    runs = {"plain": [], "ray": []}
    for r in range(args.rounds):
        order = ("plain", "ray") if r % 2 == 0 else ("ray", "plain")
        for side in order:
            if side == "plain":
                result = timed_loop(run, batches, device, args.warmup, args.steps)
            else:
                result = run_ray(run, ref, args, storage, f"{label.split()[0].lower()}-{r}", cpus)
            runs[side].append(result)
            extra = f", fit() {result['fit_wall']:.1f} s" if side == "ray" else ""
            print(
                f"  round {r + 1} {side:5s}: {result['steps_per_s']:.3f} steps/s, median step "
                f"{1000 * statistics.median(result['step_times']):.0f} ms, CPU {result['cpu_per_step']:.2f} "
                f"s/step, {result['threads']} threads, other load {result['other_cores']:.2f} cores{extra}",
                flush=True,
            )
    del ref
    return summarise(runs, run.train.batch_size, label)


def summarise(runs: dict, batch_size: int, label: str) -> dict:
    plain, ray_ = runs["plain"], runs["ray"]
    med = {s: statistics.median(r["steps_per_s"] for r in runs[s]) for s in runs}
    step_med = {s: statistics.median(t for r in runs[s] for t in r["step_times"]) for s in runs}
    cpu = {s: statistics.median(r["cpu_per_step"] for r in runs[s]) for s in runs}
    pairs = [b["steps_per_s"] / a["steps_per_s"] for a, b in zip(plain, ray_, strict=True)]
    w = 34
    print(f"\n{label}: {len(plain)} rounds, batch {batch_size}")
    print(f"| {'':<{w}} | {'plain loop':>12} | {'Ray Train':>12} | {'ray / plain':>11} |")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|{'-' * 14}|{'-' * 13}|")
    rows = [
        ("steps/s (median of runs)", med["plain"], med["ray"], med["ray"] / med["plain"], "{:.3f}"),
        (
            "samples/s (median of runs)",
            med["plain"] * batch_size,
            med["ray"] * batch_size,
            med["ray"] / med["plain"],
            "{:.1f}",
        ),
        (
            "median step time (ms, all steps)",
            1000 * step_med["plain"],
            1000 * step_med["ray"],
            step_med["ray"] / step_med["plain"],
            "{:.1f}",
        ),
        ("CPU s per step (looping process)", cpu["plain"], cpu["ray"], cpu["ray"] / cpu["plain"], "{:.3f}"),
    ]
    for name, a, b, ratio, f in rows:
        print(f"| {name:<{w}} | {f.format(a):>12} | {f.format(b):>12} | {ratio:>11.3f} |")
    print(f"per-round ratios ray/plain: {', '.join(f'{p:.3f}' for p in pairs)}")
    others = {s: statistics.median(r["other_cores"] for r in runs[s]) for s in runs}
    print(
        f"load from the rest of the machine during the timed steps (median, cores): plain "
        f"{others['plain']:.2f}, ray {others['ray']:.2f}"
        + ("  <- busy machine: rerun when it is quiet" if max(others.values()) > 0.3 else "")
    )
    print(
        f"Ray side outside the loop (medians): fit() to the worker's loop function "
        f"{statistics.median(r['startup'] for r in ray_):.1f} s, its return to fit() returning "
        f"{statistics.median(r['teardown'] for r in ray_):.1f} s, "
        f"ray.train.report() {statistics.median(r['report_ms'] for r in ray_):.1f} ms; worker threads by "
        f"default {ray_[0]['default_threads']} (OMP_NUM_THREADS={ray_[0]['omp_num_threads']}), "
        f"used {ray_[0]['threads']}"
    )
    ratio = med["ray"] / med["plain"]
    print(
        f"RATIO ({label}): Ray Train / plain = {ratio:.3f}x steps/s (expected >= 0.9x): "
        f"{'PASS' if ratio >= 0.9 else 'FAIL'}",
        flush=True,
    )
    return {"label": label, "ratio": ratio, "steps_per_s": med, "pairs": pairs, "runs": runs}


def pipeline_run(run: RunConfig, steps: int, workdir: Path, label: str) -> None:
    """A real `fit` (Ray Data decoding included); the samples/s and data-wait fraction its loop logged."""
    import mlflow

    from orchestrator.tracking.tracker import find_run_by_name
    from orchestrator.training.job import fit

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    run = dataclasses.replace(
        run,
        name=f"overhead-pipeline-{label.split()[0].lower()}",
        storage_path=str(workdir / "runs"),
        train=dataclasses.replace(run.train, max_steps=steps, epochs=1000, eval_every_steps=steps),
        tracking=dataclasses.replace(run.tracking, tracking_uri=uri, experiment="train-overhead"),
    )
    fit(run, project_dir=workdir)
    run_id = find_run_by_name(uri, "train-overhead", run.name)
    client = mlflow.MlflowClient(tracking_uri=uri)
    hist = {
        k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
        for k in ("samples_per_second", "data_wait_fraction")
    }
    # The first logging window includes the pipeline's start-up: leave it out when there are more.
    keep = {k: (v[1:] if len(v) > 1 else v) for k, v in hist.items()}
    print(
        f"\n{label} real pipeline ({steps} steps, {run.train.num_workers} worker(s), batch "
        f"{run.train.batch_size}, logged every {run.train.log_every_steps} steps):"
    )
    print(f"  samples/s per window: {', '.join(f'{v:.1f}' for v in hist['samples_per_second'])}")
    print(f"  data-wait fraction per window: {', '.join(f'{v:.0%}' for v in hist['data_wait_fraction'])}")
    print(
        f"  median after the first window: {statistics.median(keep['samples_per_second']):.1f} samples/s, "
        f"data wait {statistics.median(keep['data_wait_fraction']):.0%}",
        flush=True,
    )


# ------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side, interleaved")
    p.add_argument("--batches", type=int, default=8, help="distinct pre-decoded batches, cycled")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step (the demo's global batch)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: all)")
    p.add_argument("--reports", type=int, default=5, help="ray.train.report calls timed after the loop")
    p.add_argument("--pipeline-steps", type=int, default=0, help="also a real fit of this many steps")
    p.add_argument("--gpu", action="store_true", help="ViT-B/32 bf16 on one GPU (skipped without CUDA)")
    p.add_argument("--gpu-batch-size", type=int, default=32)
    p.add_argument("--gpu-steps", type=int, default=60, help="steps of the real fit in --gpu mode")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--config", type=Path, default=SCRATCH)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    args.threads = args.threads or torch.get_num_threads()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="train-overhead-"))).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    torch.set_num_threads(args.threads)

    from orchestrator.ray_runtime import connect

    print(
        f"Ray: {connect(dashboard=False)}; torch {torch.__version__}, {args.threads} torch threads, "
        f"{os.cpu_count()} CPUs; workdir {workdir}",
        flush=True,
    )
    cpu_run = load_config(
        args.config, ["train.num_workers=1", f"train.batch_size={args.batch_size}", "train.cpus_per_worker=1"]
    )
    results = [compare(cpu_run, args, torch.device("cpu"), workdir / "ray", 1, "CPU tiny fp32")]
    if args.pipeline_steps:
        pipeline_run(cpu_run, args.pipeline_steps, workdir, "CPU tiny fp32")

    if args.gpu and not torch.cuda.is_available():
        print("\n--gpu: SKIPPED, CUDA is not available on this machine (torch.cuda.is_available() is False)")
    elif args.gpu:
        gpu_run = load_config(
            args.config,
            [
                *GPU_OVERRIDES,
                "train.num_workers=1",
                f"train.batch_size={args.gpu_batch_size}",
                f"train.cpus_per_worker={max(1, (os.cpu_count() or 2) // 4)}",
            ],
        )
        print(f"\nGPU: {torch.cuda.get_device_name(0)}", flush=True)
        results.append(compare(gpu_run, args, torch.device("cuda"), workdir / "ray", 1, "GPU ViT-B/32 bf16"))
        pipeline_run(gpu_run, args.gpu_steps, workdir, "GPU ViT-B/32 bf16")
        print("  (the synthetic videos are 96 px, 4 s: decoding them costs far less than real MSR-VTT clips)")
    (workdir / "train_overhead.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
