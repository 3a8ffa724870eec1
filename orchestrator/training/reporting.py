"""Rank 0's reports of a training run: metrics to MLflow, lines to the console.

Metrics go out through a queue and a thread of their own (with the ones a checkpoint kept because the server
was away), so the loop never waits on the tracking server. A restarted worker group repeats the steps after
its checkpoint (all of them, when it failed before the first one), which the failed attempt may have logged
already: they are trained again, not logged twice.
"""

from __future__ import annotations

from orchestrator.config import SELECTION_METRIC
from orchestrator.tracking.metric_queue import MetricQueue
from orchestrator.tracking.system_metrics import SystemMetrics
from orchestrator.tracking.tracker import Tracker
from orchestrator.training.payload import WorkerPayload
from orchestrator.training.progress import Progress

# How long the end of training waits for the tracking server to take the metrics still queued.
FINAL_DELIVERY_S = 600.0
CPU = "system/cpu_utilization_percentage"  # the system metric whose last step a resumed run continues


class Reporter:
    def __init__(self, payload: WorkerPayload, state, device):
        run = payload.run
        self.tracker = Tracker.start(
            payload.tracking_uri, run.tracking.experiment, run.name, state.mlflow_run_id
        )
        # The last step the run logged of each kind: a repeated step is not logged again.
        self.logged = {k: self.tracker.last_step(k) for k in ("loss", SELECTION_METRIC, CPU)}
        self.queue = MetricQueue(self.tracker.client, self.tracker.run_id, state.undelivered_metrics)
        self.system = SystemMetrics(self.queue, device, first_step=self.logged[CPU] + 1)
        self.progress = Progress(payload.total_steps, run.train.batch_size, payload.label)

    def step(self, state, sums: dict, waited: float, opt, model, grad_sync) -> None:
        metrics = self.progress.step_metrics(state, sums, waited, opt.optimizer, model, grad_sync)
        if state.step > self.logged["loss"]:
            self.queue.log(metrics, state.step)
        self.progress.show_step(state, metrics)

    def validation(self, state, scores: dict[str, float]) -> None:
        if state.step > self.logged[SELECTION_METRIC]:
            self.queue.log({f"val_{k}": v for k, v in scores.items()}, state.step)
        self.progress.show_validation(state, scores)

    def undelivered(self) -> list:
        """What the tracking server has not taken yet: kept in the checkpoint, delivered on resume."""
        return self.queue.pending()

    def finish(self, state) -> None:
        """The run's best score, then every queued metric delivered (waiting up to FINAL_DELIVERY_S)."""
        self.queue.log({"best_val_t2v_recall_at_1": state.best_score}, state.step)
        self.system.stop()
        if not self.queue.close(timeout=FINAL_DELIVERY_S):
            raise RuntimeError(
                f"{len(self.queue.pending())} metrics could not reach MLflow at {self.tracker.uri} within "
                f"{FINAL_DELIVERY_S:.0f} s of the end of training; the last checkpoint holds them, and "
                "running the same command again delivers them"
            )
