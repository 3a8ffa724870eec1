"""Ablation of Prompt Switch's parts on the synthetic videos, with the real Ray Train + Ray Data pipeline.

Four rows, each trained from scratch by `orchestrator.trainer.fit` on `configs/demo.yaml` (the tiny CLIP,
random init, 2 CPU workers) with the same step budget and seed, then scored once on the test split (36
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
        [--workdir DIR] [--config configs/demo.yaml] [key=value ...]

Extra key=value arguments are passed to every row as config overrides (after the row's own).
"""

from __future__ import annotations

import argparse
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

ROWS = {
    "clip": (
        "mean-pooled CLIP",
        ["model.prompts=false", "model.aggregation=false", "model.caption_weight=0"],
    ),
    "cube": ("+ cube and switch", ["model.aggregation=false", "model.caption_weight=0"]),
    "agg": ("+ aggregation", ["model.caption_weight=0"]),
    "full": ("+ caption loss (full)", []),
}
# Columns of the table: (metric key without the test_ prefix, header, higher is better)
COLUMNS = [
    ("t2v_recall_at_1", "t2v R@1", True),
    ("t2v_recall_at_5", "t2v R@5", True),
    ("t2v_median_rank", "t2v MdR", False),
    ("v2t_recall_at_1", "v2t R@1", True),
]
EXPERIMENT = "promptswitch-ablation"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=200, help="train.max_steps of every row")
    parser.add_argument("--seeds", default="24", help="comma-separated train.seed values, averaged")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every row")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows or not args.seeds:
        parser.error(f"--rows must name some of {', '.join(ROWS)} and --seeds at least one seed")
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


def best_val(uri: str, run_name: str) -> float | None:
    """The best validation t2v R@1 the run logged (what chose its test checkpoint)."""
    import mlflow

    from orchestrator.tracking import find_run_by_name

    run_id = find_run_by_name(uri, EXPERIMENT, run_name)
    if run_id is None:
        return None
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run_id, "val_t2v_recall_at_1")
    return max((m.value for m in history), default=None)


def chance(num_videos: int) -> dict[str, float]:
    """Expected metrics of a random ranking (every caption's video uniformly placed among num_videos)."""
    return {
        "t2v_recall_at_1": 100 / num_videos,
        "t2v_recall_at_5": 100 * min(5, num_videos) / num_videos,
        "t2v_median_rank": (num_videos + 1) / 2,
        "v2t_recall_at_1": 100 / num_videos,  # v2t ranks videos by their best caption: 1 in num_videos
    }


def fmt(value: float, spread: float | None = None) -> str:
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def print_table(results: list[dict], rows: list[str], seeds: list[int], num_videos: int) -> None:
    header = ["row", "model", *[c[1] for c in COLUMNS], "best val R@1", "minutes"]
    lines = []
    means = {}
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        if not mine:
            continue
        cells = [row, ROWS[row][0]]
        means[row] = {}
        for key, _, _ in COLUMNS + [("best_val", "", True), ("minutes", "", False)]:
            values = [r[key] for r in mine if r.get(key) is not None]
            if not values:
                cells.append("—")
                continue
            means[row][key] = statistics.fmean(values)
            spread = (max(values) - min(values)) / 2 if len(values) > 1 else None
            cells.append(fmt(means[row][key], spread))
        lines.append(cells)
    base = chance(num_videos)
    lines.append(
        ["chance", f"random ranking of {num_videos} videos", *[fmt(base[c[0]]) for c in COLUMNS], "", ""]
    )
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    seeds_note = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± half-range over seeds {seeds}"
    print(f"\nTest split ({num_videos} videos, {2 * num_videos} captions), {seeds_note}:\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")

    # Each row against the one before it and against plain CLIP, in percentage points (MdR in ranks).
    print("\nDifferences (t2v R@1 / R@5 in points, MdR in ranks, v2t R@1 in points):")
    names = [r for r in rows if r in means]
    for prev, row in zip(names, names[1:], strict=False):
        deltas = ", ".join(
            f"{head} {means[row][key] - means[prev][key]:+.1f}"
            for key, head, _ in COLUMNS
            if key in means[row] and key in means[prev]
        )
        print(f"  {row} vs {prev}: {deltas}")
    if len(names) > 2:
        first, last = names[0], names[-1]
        deltas = ", ".join(
            f"{head} {means[last][key] - means[first][key]:+.1f}"
            for key, head, _ in COLUMNS
            if key in means[last]
        )
        print(f"  {last} vs {first}: {deltas}")
    print(
        f"  (one test caption is {100 / (2 * num_videos):.2f} points of t2v R@1; one video "
        f"{100 / num_videos:.2f} points of v2t R@1)"
    )


def main() -> int:
    args = parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ablation-"))).resolve()
    shutil.rmtree(workdir / "runs", ignore_errors=True)  # never resume an earlier run's checkpoints
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}; rows {args.rows}; seeds {args.seeds}; {args.steps} steps per row", flush=True)

    from orchestrator.ray_runtime import connect
    from orchestrator.trainer import fit
    from pipelines.manifest import read_manifest

    print(f"Ray: {connect(dashboard=False)}", flush=True)
    results: list[dict] = []
    out = workdir / "ablation.json"
    start_all = time.perf_counter()
    for seed in args.seeds:
        for row in args.rows:
            run = row_config(args, row, seed, workdir)
            print(f"\n=== row {row} ({ROWS[row][0]}), seed {seed}, run {run.name} ===", flush=True)
            start = time.perf_counter()
            metrics = fit(run, project_dir=workdir)
            minutes = (time.perf_counter() - start) / 60
            result = {"row": row, "seed": seed, "name": run.name, "minutes": minutes}
            result |= {k.removeprefix("test_"): v for k, v in metrics.items()}
            result["best_val"] = best_val(run.tracking.tracking_uri, run.name)
            results.append(result)
            out.write_text(json.dumps(results, indent=1))  # kept as it goes: a crash loses one row
            print(f"row {row} seed {seed}: {minutes:.1f} min, test t2v R@1 {result['t2v_recall_at_1']:.1f}")
    manifest = read_manifest(run.data.manifest).to_pydict()
    num_videos = len({v for v, s in zip(manifest["video_id"], manifest["split"], strict=True) if s == "test"})
    print(f"\nall rows: {(time.perf_counter() - start_all) / 60:.1f} min; results in {out}")
    print_table(results, args.rows, args.seeds, num_videos)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
