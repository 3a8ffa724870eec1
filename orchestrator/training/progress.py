"""Rank 0's account of training: the metrics of each logging window, and the lines the user reads."""

from __future__ import annotations

import time

import torch

from orchestrator.console import to_console


class Progress:
    """Per logging window: loss parts, learning rates, speed, data wait; on the console, the same with ETA."""

    def __init__(self, total_steps: int, batch_size: int, label: str = ""):
        self.total_steps, self.batch_size = total_steps, batch_size
        self.label = f"{label}  " if label else ""
        self.last_time, self.last_step = time.perf_counter(), None
        self.shown_step = None  # the step of the last line shown
        # The pace behind the ETA: steps and seconds of every window shown after the first, which holds the
        # start-up and is too slow to predict from.
        self.paced_steps, self.paced_seconds = 0, 0.0

    def step_metrics(self, state, sums: dict, waited: float, optimizer, model, grad_sync) -> dict[str, float]:
        # One read of the device's values per logging window: the host waits for the GPU only here.
        values = dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True))
        now = time.perf_counter()
        steps = state.step - (self.last_step if self.last_step is not None else state.step - 1)
        elapsed = now - self.last_time
        self.last_time, self.last_step = now, state.step
        metrics = {"loss": values["loss"]} | {f"loss_{k}": v for k, v in values.items() if k != "loss"}
        metrics |= {f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}
        metrics["logit_scale"] = model.clip.logit_scale.exp().item()
        metrics["samples_per_second"] = steps * self.batch_size / elapsed
        metrics["data_wait_fraction"] = min(1.0, waited / max(elapsed, 1e-9))
        if grad_sync is not None:  # what this rank sent to the gradient all-reduce, per optimiser step
            metrics["grad_sync_mb_per_step"] = grad_sync.take_bytes() / steps / 1e6
        return metrics

    def show_step(self, state, m: dict[str, float]) -> None:
        if self.shown_step is not None:
            steps = state.step - self.shown_step
            self.paced_steps += steps
            self.paced_seconds += steps * self.batch_size / max(m["samples_per_second"], 1e-9)
        self.shown_step = state.step
        # The mean pace since the first window, epoch starts and validations included: one slow window does
        # not swing the estimate, and what it predicts is the wall-clock time left.
        remaining = self.total_steps - state.step
        known = self.paced_steps or not remaining
        eta = _duration(remaining * self.paced_seconds / max(self.paced_steps, 1)) if known else "?"
        parts = "  ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
        to_console(
            f"{self.label}epoch {state.epoch + 1}  step {state.step}/{self.total_steps}  "
            f"loss {m['loss']:.3f} ({parts})  "
            f"{m['samples_per_second']:.1f} samples/s  data wait {m['data_wait_fraction']:.0%}  "
            f"ETA {eta}"
        )

    def show_validation(self, state, scores: dict[str, float]) -> None:
        to_console(
            f"{self.label}validation at step {state.step}: t2v R@1 {scores['t2v_recall_at_1']:.1f}  "
            f"R@5 {scores['t2v_recall_at_5']:.1f}  v2t R@1 {scores['v2t_recall_at_1']:.1f}  "
            f"(best t2v R@1 {state.best_score:.1f})"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"
