"""The training run's plots, logged as MLflow artifacts: recall at K, loss curves, validation R@1.

Drawn with matplotlib's Agg canvas on a bare Figure: no pyplot, no global backend, safe in any process.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

from model.metrics import RECALL_AT
from orchestrator.tracking.tracker import Tracker

# History series drawn as loss curves: each under its own name or with a "train_" prefix.
LOSS_SERIES = {"loss": "total loss", "contrastive": "contrastive (InfoNCE)", "caption": "caption"}
VAL_R1_SERIES = {"val_t2v_recall_at_1": "text -> video", "val_v2t_recall_at_1": "video -> text"}


def log_training_plots(tracker: Tracker, final_metrics: dict[str, float]) -> None:
    curves = ("loss", "loss_contrastive", "loss_caption", "val_t2v_recall_at_1", "val_v2t_recall_at_1")
    log_plots(tracker, tracker.metric_history(*curves), final_metrics)


def log_plots(
    tracker: Tracker, history: Mapping[str, list[tuple[int, float]]], final_metrics: Mapping[str, float]
) -> list[str]:
    """PNG plots under `plots/` (recall at K, loss curves, validation R@1); returns their artifact paths.

    `history` maps a metric name to its `(step, value)` points: "loss", "contrastive", "caption" (or
    "train_loss", ...) and "val_t2v_recall_at_1" / "val_v2t_recall_at_1". `final_metrics` holds keys
    like "test_t2v_recall_at_1" or "val_v2t_recall_at_10" (a bar group per split present). A plot with
    no data is skipped.
    """
    figures = {
        "recall_at_k.png": _recall_figure(final_metrics, tracker.run_name),
        "loss_curves.png": _loss_figure(history, tracker.run_name),
        "val_recall_at_1.png": _val_r1_figure(history, tracker.run_name),
    }
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figures.items():
            if fig is None:
                continue
            path = Path(tmp) / name
            fig.savefig(path, dpi=120)
            tracker.client.log_artifact(tracker.run_id, str(path), "plots")
            logged.append(f"plots/{name}")
    return logged


def new_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure with `ncols` axes, drawn off-screen (no pyplot state, safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _recall_figure(final_metrics: Mapping[str, float], run_name: str):
    splits = []
    for prefix, label in (("test_", "test"), ("val_", "validation"), ("", "evaluation")):
        directions = [
            (d, [final_metrics.get(f"{prefix}{d}_recall_at_{k}") for k in RECALL_AT]) for d in ("t2v", "v2t")
        ]
        directions = [(d, values) for d, values in directions if all(v is not None for v in values)]
        if directions:
            splits.append((label, directions))
    if not splits:
        return None
    fig, axes = new_figure(5.5 * len(splits), 4.2, ncols=len(splits))
    names = {"t2v": "text -> video", "v2t": "video -> text"}
    colors = {"t2v": "tab:blue", "v2t": "tab:orange"}
    width = 0.38
    for ax, (label, directions) in zip(axes, splits, strict=True):
        for i, (direction, values) in enumerate(directions):
            offset = (i - (len(directions) - 1) / 2) * width
            bars = ax.bar(
                [x + offset for x in range(len(RECALL_AT))],
                values,
                width,
                label=names[direction],
                color=colors[direction],
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        ax.set_xticks(range(len(RECALL_AT)), [f"R@{k}" for k in RECALL_AT])
        ax.set_ylim(0, 109)
        ax.set_ylabel("recall (%)")
        ax.set_title(f"{label} split")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Retrieval recall at K - {run_name}")
    return fig


def _loss_figure(history: Mapping[str, list[tuple[int, float]]], run_name: str):
    series = []
    for name, title in LOSS_SERIES.items():
        key = name if history.get(name) else f"train_{name}"
        if points := _by_step(history.get(key) or []):
            series.append((title, points))
    if not series:
        return None
    fig, axes = new_figure(4.2 * len(series), 3.6, ncols=len(series))
    for ax, (title, points) in zip(axes, series, strict=True):
        steps, values = zip(*points, strict=True)
        if len(values) >= 50:  # noisy per-step losses: faint raw curve, smoothed curve on top
            ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="raw")
            ax.plot(steps, _ema(values, 0.9), color="tab:blue", linewidth=1.6, label="smoothed (EMA 0.9)")
            ax.legend(fontsize=8)
        else:
            ax.plot(steps, values, color="tab:blue", marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training losses - {run_name}")
    return fig


def _val_r1_figure(history: Mapping[str, list[tuple[int, float]]], run_name: str):
    series = [(label, _by_step(history.get(key) or [])) for key, label in VAL_R1_SERIES.items()]
    series = [(label, points) for label, points in series if points]
    if not series:
        return None
    fig, (ax,) = new_figure(6.0, 4.0)
    for label, points in series:
        steps, values = zip(*points, strict=True)
        (line,) = ax.plot(steps, values, marker="o", markersize=4, label=label)
        best = max(range(len(values)), key=lambda i: values[i])
        ax.annotate(
            f"best {values[best]:.1f} @ {steps[best]}",
            (steps[best], values[best]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
            color=line.get_color(),
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("R@1 (%)")
    top = max(v for _, points in series for _, v in points)
    ax.set_ylim(0, max(1.0, min(100.0, top * 1.25 + 1)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Validation R@1 - {run_name}")
    return fig


def _by_step(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Sorted by step, the last value kept where a step repeats (a resumed run re-logs a few steps)."""
    last = {int(step): float(value) for step, value in points}
    return sorted((s, v) for s, v in last.items() if not math.isnan(v))


def _ema(values: tuple[float, ...], decay: float) -> list[float]:
    out, avg = [], values[0]
    for value in values:
        avg = decay * avg + (1 - decay) * value
        out.append(avg)
    return out
