"""The training recipe every Ray Train worker runs, top to bottom: set up, loop, validate, checkpoint, finish.

The driver (`training/job.py`) builds the Ray Train job and hands each worker a `WorkerPayload`. Every worker
trains on its shard of the training pairs (DDP averages the gradients) and embeds its share of the validation
videos; rank 0 also ranks the captions, reports to MLflow and the console, and writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from model import build_model
from orchestrator import storage
from orchestrator.config import RunConfig
from orchestrator.config_io import dump_config
from orchestrator.training import checkpoint
from orchestrator.training.evaluation import validate
from orchestrator.training.grad_sync import attach as attach_grad_sync
from orchestrator.training.payload import WorkerPayload
from orchestrator.training.reporting import Reporter
from orchestrator.training.step import autocast_for, build_optimisation, optimiser_steps


def train(payload: WorkerPayload) -> None:
    run, cfg = payload.run, payload.run.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    # 1. Set up: the model on its device, optimiser and schedule, and the state of the last checkpoint.
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        # TF32 for the fp32 matmuls (all of them in an fp32 run, the few autocast leaves in bf16): several
        # times the fp32 rate on Ampere and later, at a precision that training does not notice.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    resumed = ray.train.get_checkpoint() or _checkpoint_at(payload.latest_checkpoint)
    with resumed.as_directory() if resumed else contextlib.nullcontext() as folder:
        model, opt, state = set_up_model(run, device, payload.total_steps, folder and Path(folder))
    state.mlflow_run_id = state.mlflow_run_id or payload.mlflow_run_id
    if cfg.compile:
        model.compile_towers()
    # DDP when world > 1. The model has no buffers that training changes: none are synced before each step.
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    grad_sync = attach_grad_sync(ddp, cfg.grad_compression)
    autocast = autocast_for(cfg.precision, device)
    reporter = Reporter(payload, state, device) if rank == 0 else None

    # 2. Data: this worker's shard of the training pairs, and its share of the validation videos.
    shard = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val") if payload.val_captions is not None else None
    micro_batch = cfg.batch_size // (cfg.grad_accum * world)
    config_yaml = dump_config(run)

    def validate_and_checkpoint() -> None:
        # 4. Validate: every worker embeds its share; the metrics pick the checkpoints Ray Train keeps.
        metrics = {"step": state.step, "epoch": state.epoch}
        if val is not None:
            scores = validate(model, val, payload.val_captions, device, autocast, rank)
            metrics |= {f"val_{k}": v for k, v in scores.items()}
            state.best_score = max(state.best_score, scores["t2v_recall_at_1"])
            if reporter:
                reporter.validation(state, scores)
        # 5. Checkpoint: one copy of the weights (every rank holds the same ones), written by rank 0.
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if reporter:
                state.undelivered_metrics = reporter.undelivered()  # delivered on resume if not before
                checkpoint.save(Path(tmp), model, opt, state, config_yaml)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    # 3. The loop: an epoch is one pass over the shard in a fresh order with fresh frames and crops.
    last_eval = state.step
    while state.epoch < cfg.epochs and state.step < payload.total_steps:
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
            if reporter and state.step % cfg.log_every_steps == 0:
                reporter.step(state, sums, waited, opt, model, grad_sync)
                waited = 0.0
            if cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0:
                validate_and_checkpoint()
                last_eval = state.step
            if state.step >= payload.total_steps:
                break
        state.epoch += 1
        if not cfg.eval_every_steps:
            validate_and_checkpoint()
            last_eval = state.step

    # 6. Finish: the final state is always in a checkpoint, and every metric reaches MLflow.
    if last_eval != state.step:
        validate_and_checkpoint()
    if reporter:
        reporter.finish(state)


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


def _checkpoint_at(path: str | None) -> ray.train.Checkpoint | None:
    if path is None:
        return None
    filesystem, inside = storage.location(path)
    return ray.train.Checkpoint(inside, filesystem=filesystem)
