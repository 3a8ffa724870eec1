"""What the prompt cube buys, in a world built so that only order separates a video from its twin.

Stage 1 pretrains the tiny CLIP on single frames (`orchestrator/image_pretraining.py`: colours and shapes,
nothing about time) and saves it as an open_clip checkpoint. Stage 2 adapts it, through `model.pretrained=`
as a user loads OpenAI's weights, to order-twin videos (`pipelines/temporal.py`: "a red circle, then a blue
square"; the twin is the same frames in the other order, in the same split). Four rows, the same data,
budget and seeds each:

  clip   mean-pooled CLIP: model.prompts=false model.aggregation=false model.caption_weight=0
  cube   + prompt cube and switch: model.aggregation=false model.caption_weight=0
  agg    + prompt aggregation: model.caption_weight=0
  full   + caption loss (lambda 0.5): the full model

Columns, on the test split (every test video's twin is a test video): t2v and v2t R@1; twin choice, the %
of test videos whose own caption scores above their twin's caption (the same two things in the other
order; 50 % is a coin); and the cosine between twins' embeddings (1: the model cannot tell them apart).
Mean-pooled CLIP sees the same frames in a video and its twin, so by construction its twin cosine is 1 and
its twin choice is chance (ties count half).

Training runs in one process on frames decoded once from the mp4 files, with the product's model and its
optimiser step (`build_optimisation`, `forward_losses`); Ray is not what is measured here. The test metrics
are taken every --eval-every steps for the curves.

    .venv/bin/python bench/temporal.py [--steps 200] [--seeds 0 1 2] [--rows clip,cube,agg,full]
        [--clip-lr 1e-4] [--new-lr 1e-3] [--workdir DIR] [--out docs/temporal]

Writes OUT.json (every curve) and OUT.png (the rows' curves), and prints the table with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import ModelConfig, build_model, normalize_frames, retrieval_metrics, tokenize  # noqa: E402
from orchestrator.config import TrainConfig  # noqa: E402
from orchestrator.image_pretraining import CHANCE, image_accuracy, pretrain_tiny_clip  # noqa: E402
from orchestrator.training.step import autocast_for, build_optimisation, forward_losses  # noqa: E402
from pipelines.manifest import read_manifest  # noqa: E402
from pipelines.sampling import frame_indices  # noqa: E402
from pipelines.synth import twin_of, write_twin_dataset  # noqa: E402
from pipelines.video import open_video  # noqa: E402

T, FRAMES, SIZE = 6, 48, 64
ROWS = {
    "clip": {"prompts": False, "aggregation": False, "caption_weight": 0.0},
    "cube": {"aggregation": False, "caption_weight": 0.0},
    "agg": {"caption_weight": 0.0},
    "full": {},
}
LABELS = {
    "clip": "mean-pooled CLIP",
    "cube": "+ cube and switch",
    "agg": "+ aggregation",
    "full": "+ caption loss",
}


def load_split(manifest: Path, split: str) -> dict:
    """Every video of `split` decoded once: frames (V, FRAMES, 3, S, S) uint8, captions, twin index."""
    table = read_manifest(manifest).to_pylist()
    ids = sorted({r["video_id"] for r in table if r["split"] == split})
    index = {v: i for i, v in enumerate(ids)}
    paths = {r["video_id"]: r["video_path"] for r in table}
    frames = np.stack([open_video(paths[v], short_side=SIZE).read(np.arange(FRAMES)) for v in ids])
    captions = [[r["caption"] for r in table if r["video_id"] == v] for v in ids]
    twin = [index[twin_of(v)] for v in ids]
    return {
        "frames": torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(),
        "captions": captions,
        "tokens": [tokenize(c) for c in captions],
        "twin": torch.tensor(twin),
    }


@torch.no_grad()
def evaluate(model, test: dict) -> dict[str, float]:
    model.eval()
    picked = frame_indices(FRAMES, T, groups=2)
    videos = model.encode_video(normalize_frames(test["frames"][:, picked]))
    first = torch.cat([t[:1] for t in test["tokens"]])  # each video's first caption ("A, then B")
    texts = model.encode_text(first)
    metrics = retrieval_metrics(texts @ videos.T, torch.arange(len(videos)))
    twin = test["twin"]
    own, swapped = (texts * videos).sum(1), (texts[twin] * videos).sum(1)
    choice = ((own > swapped).float() + 0.5 * (own == swapped).float()).mean()
    model.train()
    return {
        "t2v_r1": metrics["t2v_recall_at_1"],
        "v2t_r1": metrics["v2t_recall_at_1"],
        "twin_choice": 100 * float(choice),
        "twin_cosine": float((videos * videos[twin]).sum(1).mean()),
    }


def train_row(row: str, seed: int, weights: Path, train: dict, test: dict, args) -> list[dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig(name="tiny", frames_per_group=T, pretrained=str(weights), **ROWS[row])
    model = build_model(config).train()
    cfg = TrainConfig(batch_size=args.batch, clip_lr=args.clip_lr, new_lr=args.new_lr, seed=seed)
    opt = build_optimisation(model, cfg, args.steps)
    autocast, cpu = autocast_for("fp32", torch.device("cpu")), torch.device("cpu")
    curve = [{"step": 0} | evaluate(model, test)]
    n = len(train["frames"])
    for step in range(1, args.steps + 1):
        pick = rng.choice(n, args.batch, replace=False)  # each video once: one positive per caption
        frames = torch.stack([train["frames"][i, frame_indices(FRAMES, T, rng=rng)] for i in pick])
        tokens = torch.stack([train["tokens"][i][rng.integers(len(train["tokens"][i]))] for i in pick])
        batch = {"frames": frames, "tokens": tokens, "video_index": torch.from_numpy(pick)}
        losses = forward_losses(model, batch, cpu, autocast)
        opt.backward(losses["loss"])
        opt.step(model, cfg.grad_clip)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": losses["loss"].item()} | evaluate(model, test))
    return curve


def plot(results: dict, path: Path) -> None:
    from orchestrator.tracking.plots import new_figure

    keys = ("t2v_r1", "twin_choice", "twin_cosine")
    fig, axes = new_figure(13, 3.6, ncols=len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for row, runs in results.items():
            steps = [p["step"] for p in runs[0]]
            values = np.array([[p[key] for p in curve] for curve in runs])
            mean, spread = values.mean(0), values.std(0)
            ax.plot(steps, mean, label=LABELS[row])
            ax.fill_between(steps, mean - spread, mean + spread, alpha=0.2)
        ax.set_xlabel("step")
        ax.set_title({"t2v_r1": "test t2v R@1 (%)", "twin_choice": "twin choice (%)",
                      "twin_cosine": "cosine between twins"}[key])  # fmt: skip
    axes[1].axhline(50, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--test-pairs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--clip-lr", type=float, default=1e-4)
    parser.add_argument("--new-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--stage1-steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "temporal")
    args = parser.parse_args()
    rows = args.rows.split(",")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="temporal-"))
    started = time.perf_counter()

    manifest = workdir / "twins" / "manifest.parquet"
    if not manifest.exists():
        write_twin_dataset(manifest.parent, args.pairs, seed=0, test_pairs=args.test_pairs, val_pairs=0)
    weights = workdir / f"tiny-image-clip-{args.stage1_steps}.safetensors"
    if not weights.exists():
        pretrain_tiny_clip(weights, steps=args.stage1_steps)
    print(f"stage 1: image accuracy {image_accuracy(weights):.1f} % (chance {CHANCE:.1f} %)", flush=True)
    train, test = load_split(manifest, "train"), load_split(manifest, "test")
    n_train, n_test = len(train["frames"]), len(test["frames"])
    print(f"data: {n_train} training videos, {n_test} test videos ({n_test // 2} twin pairs)", flush=True)

    results = {}
    for row in rows:
        results[row] = []
        for seed in args.seeds:
            tick = time.perf_counter()
            results[row].append(train_row(row, seed, weights, train, test, args))
            last = results[row][-1][-1]
            print(f"{row:5s} seed {seed}: t2v R@1 {last['t2v_r1']:5.1f}  "
                  f"twin choice {last['twin_choice']:5.1f}  twin cosine {last['twin_cosine']:.4f}  "
                  f"({time.perf_counter() - tick:.0f} s)", flush=True)  # fmt: skip

    print(f"\n{len(args.seeds)} seeds, {args.steps} steps of {args.batch}, mean ± std at the end "
          f"({time.perf_counter() - started:.0f} s in all):")  # fmt: skip
    print("| row | t2v R@1 | v2t R@1 | twin choice (%) | twin cosine |\n|---|---|---|---|---|")
    for row, runs in results.items():
        cells = []
        for key in ("t2v_r1", "v2t_r1", "twin_choice", "twin_cosine"):
            fmt = ".4f" if key == "twin_cosine" else ".1f"
            values = [curve[-1][key] for curve in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):{fmt}} ± {spread:{fmt}}")
        print(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = vars(args) | {"out": str(args.out), "workdir": str(workdir)}
    args.out.with_suffix(".json").write_text(json.dumps({"args": settings, "curves": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"curves: {args.out.with_suffix('.json')}, plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
