"""Ablation of Prompt Switch's parts on the synthetic videos, with the real Ray Train + Ray Data pipeline.

Four rows, each trained from scratch by `orchestrator.training.job.fit` on `configs/scratch.yaml` (the tiny
CLIP, random init, 2 CPU workers) with the same step budget and seed, then scored once on the test split (36
videos, 72 captions, combinations of shape, colour and path never seen in training) from the checkpoint
with the best validation t2v R@1:

  1. clip   mean-pooled CLIP: model.prompts=false model.aggregation=false model.caption_weight=0
  2. cube   + prompt cube and switch: model.aggregation=false model.caption_weight=0
  3. agg    + prompt aggregation: model.caption_weight=0
  4. full   + caption loss (lambda = model.caption_weight = 0.5): the full model

The seed (`train.seed`) fixes the model initialisation; the data pipeline's shuffles, frame draws and crops
take fresh entropy every epoch (pipelines/dataset.py), so two runs of one row differ a little anyway; pass
several --seeds to average. Each row is its own run `ablation-<row>` (`-s<seed>` appended with several
seeds) with its checkpoints under WORKDIR/runs (wiped first, so a rerun starts fresh, never resumes) and
MLflow tracking in WORKDIR/mlflow.db, experiment `promptswitch-ablation`.

    .venv/bin/python bench/ablation.py [--steps 200] [--seeds 24] [--rows clip,cube,agg,full]
        [--workdir DIR] [--config configs/scratch.yaml] [key=value ...]

Extra key=value arguments are passed to every row as config overrides (after the row's own).

Scoring. `fit` returns test metrics of `result.best_checkpoints[0]`, but Ray Train 2.x lists the kept
checkpoints worst first, so with num_checkpoints=2 that is the second best by validation R@1, not the best.
This script therefore re-scores the checkpoint with the highest validation t2v R@1 (the later one on a tie)
itself, with the same evaluation frames (`eval_dataset`: 2 groups of 6 frames) and `retrieval_metrics`, and
prints `fit`'s own figure beside it. It adds two probes of whether a video embedding encodes the order of
the two moves, on the same checkpoint (both 50 % by chance):

  - swapped caption: for every test caption, is its video closer to it than to the caption with the two
    directions swapped ("moves left, then up" vs "moves up, then left")?  72 forced choices;
  - twin video: for captions whose video's order-twin (same shape and colour, moves reversed) is also in
    the test split, is the caption closer to its own video than to the twin?  20 forced choices.

and, to read them, the mean cosine similarity of the twin videos' embeddings and of each caption's
embedding with its swapped caption's (near 1: that side of the model does not tell the orders apart).

Only 10 of the 36 test videos have their order-twin in the test split, so t2v R@1 mostly measures shape,
colour and the pair of directions: an order-blind model that got everything else right would reach about
86 % t2v R@1 (printed as "order-blind ceiling"). The probes isolate the order.

    .venv/bin/python bench/ablation.py --score-only --workdir DIR   # re-score the runs in DIR, no training
    .venv/bin/python bench/ablation.py --merge DIR1 DIR2           # one table over earlier runs (seeds)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS = {
    "clip": (
        "mean-pooled CLIP",
        ["model.prompts=false", "model.aggregation=false", "model.caption_weight=0"],
    ),
    "cube": ("+ cube and switch", ["model.aggregation=false", "model.caption_weight=0"]),
    "agg": ("+ aggregation", ["model.caption_weight=0"]),
    "full": ("+ caption loss (full)", []),
}
# Columns of the table: (result key, header); the test metrics are of the best checkpoint (see above).
COLUMNS = [
    ("t2v_recall_at_1", "t2v R@1"),
    ("t2v_recall_at_5", "t2v R@5"),
    ("t2v_median_rank", "t2v MdR"),
    ("v2t_recall_at_1", "v2t R@1"),
    ("order_swap", "order: swapped caption"),
    ("order_twin", "order: twin video"),
    ("cos_twin_videos", "cos twin videos"),
    ("cos_swapped_text", "cos swapped captions"),
    ("fit_t2v_recall_at_1", "fit() t2v R@1"),
    ("best_val", "best val R@1"),
    ("best_step", "at step"),
    ("minutes", "minutes"),
]
EXPERIMENT = "promptswitch-ablation"
SCORE = "val_t2v_recall_at_1"  # what the trainer ranks checkpoints by
CAPTION = re.compile(r"^(?:a|the) (\w+) (\w+) (?:moves|goes) (\w+)(?:, then| and then) (\w+)$")
MOVES = re.compile(r"\b(moves|goes) (\w+)(, then | and then )(\w+)\b")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "scratch.yaml"))
    parser.add_argument("--steps", type=int, default=200, help="train.max_steps of every row")
    parser.add_argument("--seeds", default="24", help="comma-separated train.seed values, averaged")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--score-only", action="store_true", help="re-score the runs already in --workdir")
    parser.add_argument("--merge", type=Path, nargs="+", help="print one table over these earlier workdirs")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every row")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows or not args.seeds:
        parser.error(f"--rows must name some of {', '.join(ROWS)} and --seeds at least one seed")
    if args.score_only and not args.workdir:
        parser.error("--score-only needs the --workdir of an earlier run")
    return args


def row_config(args, row: str, seed: int, workdir: Path):
    from orchestrator.config_io import load_config

    name = f"ablation-{row}" + (f"-s{seed}" if len(args.seeds) > 1 else "")
    overrides = [
        f"name={name}",
        f"storage_path={workdir / 'runs'}",
        f"train.max_steps={args.steps}",
        f"train.seed={seed}",
        f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        f"tracking.experiment={EXPERIMENT}",
        *ROWS[row][1],
        *args.overrides,
    ]
    return load_config(args.config, overrides)


def swap_order(caption: str) -> str:
    """The same caption with its two moves in the other order."""
    m = MOVES.search(caption)
    if m is None:
        raise ValueError(f"not a synthetic caption (no 'moves X, then Y'): {caption!r}")
    return f"{caption[: m.start()]}{m[1]} {m[4]}{m[3]}{m[2]}{caption[m.end() :]}"


def load_test_set(run) -> dict:
    """The test split decoded once (evaluation frames, as scoring uses them), captions and order-twins."""
    import torch

    from pipelines.dataset import eval_dataset, prepare_data

    data = prepare_data(run.data, run.model.frames_per_group)
    split = data.splits["test"]
    n = len(split.videos)
    frames: list = [None] * n
    dataset = eval_dataset(data, run.data, run.model.frames_per_group, "test")
    for batch in dataset.iter_torch_batches(
        batch_size=16, dtypes={"frames": torch.uint8, "video_index": torch.long}
    ):
        for i, f in zip(batch["video_index"].tolist(), batch["frames"], strict=True):
            frames[i] = f
    if any(f is None for f in frames):
        raise RuntimeError("some test videos could not be decoded")
    captions = split.captions["caption"].to_pylist()
    caption_video = split.captions["video_index"].to_pylist()
    spec = {}
    for caption, video in zip(captions, caption_video, strict=True):
        m = CAPTION.match(caption)
        if m is None:
            raise ValueError(f"not a synthetic caption: {caption!r}")
        spec.setdefault(video, m.groups())
    by_spec = {s: v for v, s in spec.items()}
    twin = [by_spec.get((c, s, second, first), -1) for v in range(n) for c, s, first, second in [spec[v]]]
    # A model exact on shape, colour and the two directions but blind to their order: 50 % on twins.
    ceiling = 100 * statistics.fmean(0.5 if twin[v] >= 0 else 1.0 for v in caption_video)
    return {
        "frames": torch.stack(frames),
        "captions": captions,
        "swapped": [swap_order(c) for c in captions],
        "caption_video": torch.tensor(caption_video),
        "twin": torch.tensor(twin),
        "summary": {
            "num_videos": n,
            "num_captions": len(captions),
            "twins": sum(t >= 0 for t in twin),
            "ceiling": ceiling,
        },
    }


def best_checkpoint(storage: Path):
    """(checkpoint, its reported metrics) with the highest validation t2v R@1; the later one on a tie."""
    import ray.train

    result = ray.train.Result.from_path(str(storage))
    return max(result.best_checkpoints, key=lambda cm: (cm[1][SCORE], cm[1]["step"]))


def score(ckpt, run, test: dict) -> dict[str, float]:
    """Test metrics of `ckpt` as the trainer computes them, plus the two order probes (percent)."""
    import torch

    from model import build_model, normalize_frames, retrieval_metrics, tokenize
    from orchestrator.training.checkpoint import load_weights

    model = build_model(run.model)
    with ckpt.as_directory() as folder:
        load_weights(Path(folder), model)
    model.eval()
    with torch.no_grad():
        frames = test["frames"]
        video = torch.cat(
            [model.encode_video(normalize_frames(frames[i : i + 16])) for i in range(0, len(frames), 16)]
        )
        text = model.encode_text(tokenize(test["captions"]))
        swapped = model.encode_text(tokenize(test["swapped"]))
    cv, twin = test["caption_video"], test["twin"]
    sims = text @ video.T
    metrics = retrieval_metrics(sims, cv)
    rows = torch.arange(len(cv))
    own = sims[rows, cv]
    metrics["order_swap"] = 100 * (own > (swapped * video[cv]).sum(1)).float().mean().item()
    has = twin[cv] >= 0
    metrics["order_twin"] = 100 * (own[has] > sims[rows[has], twin[cv][has]]).float().mean().item()
    # Why a probe sits at 50 %: how alike the model makes the two orders, on each side.
    videos = (twin >= 0).nonzero().flatten()
    metrics["cos_twin_videos"] = (video[videos] * video[twin[videos]]).sum(1).mean().item()
    metrics["cos_swapped_text"] = (text * swapped).sum(1).mean().item()
    return metrics


def chance(num_videos: int) -> dict[str, float]:
    """Expected metrics of a random ranking (each caption's video uniformly placed among num_videos)."""
    return {
        "t2v_recall_at_1": 100 / num_videos,
        "t2v_recall_at_5": 100 * min(5, num_videos) / num_videos,
        "t2v_median_rank": (num_videos + 1) / 2,
        "v2t_recall_at_1": 100 / num_videos,  # v2t ranks videos by their best caption: 1 in num_videos
        "order_swap": 50.0,
        "order_twin": 50.0,
        "fit_t2v_recall_at_1": 100 / num_videos,
    }


def fmt(key: str, values: list[float]) -> str:
    digits = 0 if key == "best_step" else 3 if key.startswith("cos_") else 1
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def print_table(results: list[dict], rows: list[str], seeds: list[int], test: dict) -> None:
    """`test`: the test split's summary (num_videos, num_captions, twins, ceiling)."""
    n, num_captions = test["num_videos"], test["num_captions"]
    header = ["row", "model", *[c[1] for c in COLUMNS]]
    lines, means = [], {}
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        if not mine:
            continue
        means[row] = {k: statistics.fmean(r[k] for r in mine) for k, _ in COLUMNS if k in mine[0]}
        lines.append(
            [row, ROWS[row][0], *[fmt(k, [r[k] for r in mine]) if k in mine[0] else "—" for k, _ in COLUMNS]]
        )
    base = chance(n)
    lines.append(
        [
            "chance",
            f"random ranking of {n} videos",
            *[f"{base[k]:.1f}" if k in base else "" for k, _ in COLUMNS],
        ]
    )
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    seeds_note = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± half-range over seeds {seeds}"
    print(
        f"\nTest split ({n} videos, {num_captions} captions), best checkpoint by validation "
        f"t2v R@1, {seeds_note}. Order probes in % correct of forced choices (swapped caption: "
        f"{num_captions}; twin video: captions of the {test['twins']} test videos whose "
        f"order-twin is in the split). Order-blind ceiling of t2v R@1: {test['ceiling']:.1f}.\n"
    )
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")

    # Each row against the one before it and against plain CLIP: points (MdR in ranks).
    keys = [(k, h) for k, h in COLUMNS[:6]]
    names = [r for r in rows if r in means]
    pairs = list(zip(names, names[1:], strict=False)) + ([(names[0], names[-1])] if len(names) > 2 else [])
    print("\nDifferences (points; MdR in ranks, lower is better):")
    for prev, row in pairs:
        deltas = ", ".join(f"{h} {means[row][k] - means[prev][k]:+.1f}" for k, h in keys if k in means[row])
        print(f"  {row} vs {prev}: {deltas}")
    print(
        f"  (one test caption is {100 / num_captions:.2f} points of t2v R@1 and of the "
        f"swapped-caption probe; one video {100 / n:.2f} points of v2t R@1; one twin-probe caption "
        f"{100 / max(1, 2 * test['twins']):.1f} points)"
    )


def main() -> int:
    args = parse_args()
    if args.merge:
        return merge(args.merge, args.rows)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ablation-"))).resolve()
    out = workdir / "ablation.json"
    earlier = json.loads(out.read_text()) if args.score_only and out.exists() else []
    if earlier:  # the seeds those runs were trained with (they also decide the run names)
        args.seeds = sorted({r["seed"] for r in earlier})
    if not args.score_only:
        shutil.rmtree(workdir / "runs", ignore_errors=True)  # never resume an earlier run's checkpoints
    workdir.mkdir(parents=True, exist_ok=True)
    what = "re-scoring" if args.score_only else f"{args.steps} steps per row"
    print(f"workdir {workdir}; rows {args.rows}; seeds {args.seeds}; {what}", flush=True)

    from orchestrator.ray_runtime import connect
    from orchestrator.training.job import fit

    print(f"Ray: {connect(dashboard=False)}", flush=True)
    results: list[dict] = []
    test = None
    start_all = time.perf_counter()
    for seed in args.seeds:
        for row in args.rows:
            run = row_config(args, row, seed, workdir)
            if args.score_only:
                old = next((r for r in earlier if r["row"] == row and r["seed"] == seed), {})
                result = {"row": row, "seed": seed, "name": run.name, "minutes": old.get("minutes")}
                result["fit_t2v_recall_at_1"] = old.get("fit_t2v_recall_at_1", old.get("t2v_recall_at_1"))
                result = {k: v for k, v in result.items() if v is not None}
            else:
                print(f"\n=== row {row} ({ROWS[row][0]}), seed {seed}, run {run.name} ===", flush=True)
                start = time.perf_counter()
                metrics = fit(run, project_dir=workdir)
                minutes = (time.perf_counter() - start) / 60
                result = {"row": row, "seed": seed, "name": run.name, "minutes": minutes}
                result["fit_t2v_recall_at_1"] = metrics["test_t2v_recall_at_1"]
            if test is None:
                test = load_test_set(run)
            ckpt, reported = best_checkpoint(Path(run.storage_path) / run.name)
            result |= score(ckpt, run, test) | {"best_val": reported[SCORE], "best_step": reported["step"]}
            result["test"] = test["summary"]
            results.append(result)
            out.write_text(json.dumps(results, indent=1))  # kept as it goes: a crash loses one row
            fit_r1 = result.get("fit_t2v_recall_at_1", float("nan"))
            print(
                f"row {row} seed {seed}: test t2v R@1 {result['t2v_recall_at_1']:.1f} (best checkpoint, step "
                f"{result['best_step']}; fit() returned {fit_r1:.1f}), "
                f"order probes {result['order_swap']:.1f} / {result['order_twin']:.1f}",
                flush=True,
            )
    print(f"\nall rows: {(time.perf_counter() - start_all) / 60:.1f} min; results in {out}")
    print_table(results, args.rows, args.seeds, test["summary"])
    return 0


def merge(dirs: list[Path], rows: list[str]) -> int:
    """One table over the results of earlier runs (e.g. one seed per --workdir), no training or scoring."""
    results = [r for d in dirs for r in json.loads((d / "ablation.json").read_text())]
    missing = [
        str(d) for d in dirs if not any("test" in r for r in json.loads((d / "ablation.json").read_text()))
    ]
    if missing:
        raise SystemExit(
            f"no scored results in {', '.join(missing)}: run --score-only --workdir on them first"
        )
    seeds = sorted({r["seed"] for r in results})
    print(f"merged {len(results)} results from {', '.join(str(d) for d in dirs)}")
    print_table(results, rows, seeds, next(r["test"] for r in results if "test" in r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
