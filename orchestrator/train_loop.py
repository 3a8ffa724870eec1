"""What every Ray Train worker runs: set up the model, get the data shard, loop, report and checkpoint."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from model import build_model
from orchestrator import checkpoint
from orchestrator.config import SELECTION_METRIC, RunConfig
from orchestrator.config_io import config_from_dict, dump_config
from orchestrator.evaluation import embed_videos, rank_captions
from orchestrator.grad_sync import attach as attach_grad_sync
from orchestrator.metric_queue import MetricQueue
from orchestrator.step import autocast_for, build_optimisation, forward_losses
from orchestrator.system_metrics import SystemMetrics
from orchestrator.tracking import Tracker

# How long the end of training waits for the tracking server to take the metrics still queued.
FINAL_DELIVERY_S = 600.0
CPU = "system/cpu_utilization_percentage"  # the system metric whose last step a resumed run continues


def train_loop_per_worker(loop_config: dict) -> None:
    run = config_from_dict(loop_config["run"])
    cfg = run.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    # 1. Model, optimiser, schedule; state from the last checkpoint when resuming.
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        # TF32 for the fp32 matmuls (all of them in an fp32 run, the few autocast leaves in bf16): several
        # times the fp32 rate on Ampere and later, at a precision that training does not notice.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    total_steps = loop_config["total_steps"]
    resumed = ray.train.get_checkpoint() or _checkpoint_at(loop_config["latest_checkpoint"])
    with resumed.as_directory() if resumed else contextlib.nullcontext() as folder:
        model, opt, state = set_up_model(run, device, total_steps, folder and Path(folder))
    state.mlflow_run_id = state.mlflow_run_id or loop_config["mlflow_run_id"]
    if cfg.compile:
        model.compile_towers()
    # DDP when world > 1. The model has no buffers that training changes, so none are broadcast each step.
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    grad_sync = attach_grad_sync(ddp, cfg.grad_compression)
    autocast = autocast_for(cfg.precision, device)
    tracker = (
        Tracker.start(loop_config["tracking_uri"], run.tracking.experiment, run.name, state.mlflow_run_id)
        if rank == 0
        else None
    )
    # A restarted worker group repeats the steps after its checkpoint (all of them, when it failed before
    # the first one), which the failed attempt may have logged already: trained again, not logged twice.
    logged = {k: tracker.last_step(k) if tracker else 0 for k in ("loss", SELECTION_METRIC, CPU)}
    # Metrics go out through a queue and a thread of their own (with the ones a checkpoint kept because the
    # server was away): the loop never waits on the tracking server.
    to_mlflow = MetricQueue(tracker.client, tracker.run_id, state.undelivered_metrics) if tracker else None
    system = SystemMetrics(to_mlflow, device, first_step=logged[CPU] + 1) if tracker else None

    # 2. This worker's shard of the training pairs, and its share of the validation videos.
    shard = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val") if "val" in loop_config["eval_splits"] else None
    micro_batch = cfg.batch_size // (cfg.grad_accum * world)
    config_yaml = dump_config(run)
    progress = Progress(total_steps, cfg.batch_size, rank)

    def validate_and_checkpoint() -> None:
        metrics = {"step": state.step, "epoch": state.epoch}
        if val is not None:
            scores = validate(model, val, loop_config["val_captions"], device, autocast, rank)
            metrics |= {f"val_{k}": v for k, v in scores.items()}
            state.best_score = max(state.best_score, scores["t2v_recall_at_1"])
            if tracker:
                if state.step > logged[SELECTION_METRIC]:
                    to_mlflow.log({f"val_{k}": v for k, v in scores.items()}, state.step)
                progress.show_eval(state, scores)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:  # one copy of the weights: every rank holds the same ones
                state.undelivered_metrics = to_mlflow.pending()  # delivered on resume if not before
                checkpoint.save(Path(tmp), model, opt, state, config_yaml)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    # 3. The loop: an epoch is one pass over the shard in a fresh order with fresh frames and crops.
    last_eval = state.step
    while state.epoch < cfg.epochs and state.step < total_steps:
        batches = shard.iter_torch_batches(
            batch_size=micro_batch,
            drop_last=True,  # every rank's micro-batch the same size: no size exchange in the loss
            # A GPU step is short next to a CPU one: keep more batches ready, in pinned memory so that the
            # copy to the GPU runs beside the compute.
            prefetch_batches=4 if device.type == "cuda" else 2,
            pin_memory=device.type == "cuda",
            dtypes={"frames": torch.uint8, "tokens": torch.long, "video_index": torch.long},
        )
        waited = 0.0  # the data-wait fraction covers the whole logging window
        for sums, step_waited in optimiser_steps(batches, ddp, model, opt, cfg, device, autocast, world):
            state.step += 1
            waited += step_waited
            if tracker and state.step % cfg.log_every_steps == 0:
                step_metrics = progress.step_metrics(state, sums, waited, opt.optimizer, model, grad_sync)
                if state.step > logged["loss"]:
                    to_mlflow.log(step_metrics, state.step)
                progress.show_step(state, step_metrics)
                waited = 0.0
            if cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0:
                validate_and_checkpoint()
                last_eval = state.step
            if state.step >= total_steps:
                break
        state.epoch += 1
        if not cfg.eval_every_steps:
            validate_and_checkpoint()
            last_eval = state.step
    if last_eval != state.step:
        validate_and_checkpoint()  # the final state is always in a checkpoint
    if tracker:
        to_mlflow.log({"best_val_t2v_recall_at_1": state.best_score}, state.step)
        system.stop()
        if not to_mlflow.close(timeout=FINAL_DELIVERY_S):
            raise RuntimeError(
                f"{len(to_mlflow.pending())} metrics could not reach MLflow at {tracker.uri} within "
                f"{FINAL_DELIVERY_S:.0f} s of the end of training; the last checkpoint holds them, and "
                "running the same command again delivers them"
            )


def optimiser_steps(batches, ddp, model, opt, cfg, device, autocast, world: int):
    """The optimiser steps of one epoch: each takes `cfg.grad_accum` micro-batches, and yields the step's
    loss sums (on the device) and the seconds it waited for data.

    Micro-batches left at the end, too few for a step, are dropped with their gradients, as a short last
    batch is dropped: carried over, they would join the next epoch's first step and make it bigger than
    the others.
    """
    micro, waited, sums = 0, 0.0, {}
    tick = time.perf_counter()
    for batch in batches:
        waited += time.perf_counter() - tick
        micro += 1
        sync = micro % cfg.grad_accum == 0
        with contextlib.nullcontext() if sync or world == 1 else ddp.no_sync():
            losses = forward_losses(ddp, batch, device, autocast)
            opt.backward(losses["loss"] / cfg.grad_accum)
        for k, v in losses.items():  # kept on the device: read only on logging steps
            sums[k] = sums.get(k, 0.0) + v.detach() / cfg.grad_accum
        if sync:
            opt.step(model, cfg.grad_clip)
            yield sums, waited
            waited, sums = 0.0, {}
        tick = time.perf_counter()
    if micro % cfg.grad_accum:
        opt.optimizer.zero_grad(set_to_none=True)


def set_up_model(run: RunConfig, device: torch.device, total_steps: int, resume_from: Path | None):
    """(model, optimisation, state): new, or from the checkpoint in `resume_from`.

    The model goes to its device before the optimiser is built and its state loaded, so that the state
    lands beside its parameters: a model moved afterwards would leave the optimiser state on the CPU and
    fail at the first step on a GPU.
    """
    model = build_model(run.model).to(device)
    opt = build_optimisation(model, run.train, total_steps)
    state = checkpoint.load(resume_from, model, opt) if resume_from else checkpoint.TrainState()
    return model, opt, state


def validate(model, share, captions, device, autocast, rank: int) -> dict[str, float]:
    """Every worker embeds its share of the validation videos; rank 0 gathers them, ranks the captions
    against all of them, and every worker gets the metrics."""
    index, emb = embed_videos(model, share, device, autocast=autocast)
    shares = _gather((index, emb))
    scores = None
    if rank == 0:
        index, emb = (np.concatenate(parts) for parts in zip(*shares, strict=True))
        scores = rank_captions(model, index, emb, captions, device, autocast=autocast)
    return _broadcast(scores)


def _checkpoint_at(path: str | None) -> ray.train.Checkpoint | None:
    if path is None:
        return None
    from orchestrator import storage

    filesystem, inside = storage.location(path)
    return ray.train.Checkpoint(inside, filesystem=filesystem)


def _gather(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Progress:
    """Rank 0's console line and per-step metrics: loss parts, learning rates, speed, data wait, ETA."""

    def __init__(self, total_steps: int, batch_size: int, rank: int):
        self.total_steps, self.batch_size, self.rank = total_steps, batch_size, rank
        self.start = time.perf_counter()
        self.last_time, self.last_step = self.start, None

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
        remaining = (self.total_steps - state.step) * self.batch_size / max(m["samples_per_second"], 1e-9)
        parts = "  ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
        print(
            f"epoch {state.epoch + 1}  step {state.step}/{self.total_steps}  loss {m['loss']:.3f} ({parts})  "
            f"{m['samples_per_second']:.1f} samples/s  data wait {m['data_wait_fraction']:.0%}  "
            f"ETA {_duration(remaining)}",
            file=_CONSOLE,
            flush=True,
        )

    def show_eval(self, state, scores: dict[str, float]) -> None:
        print(
            f"validation at step {state.step}: t2v R@1 {scores['t2v_recall_at_1']:.1f}  "
            f"R@5 {scores['t2v_recall_at_5']:.1f}  v2t R@1 {scores['v2t_recall_at_1']:.1f}  "
            f"(best t2v R@1 {state.best_score:.1f})",
            file=_CONSOLE,
            flush=True,
        )


# Ray Train patches `print` in its workers to log each line, and prints the line as well whenever sys.stdout
# is wrapped by some library, as it is in these workers: every line came out twice. Printing to the real
# stdout bypasses the patch; Ray still forwards that stream to the driver's console.
_CONSOLE = sys.__stdout__


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"
