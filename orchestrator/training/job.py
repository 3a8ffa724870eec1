"""The driver of a training job, in order: check the run against the cluster, prepare the data, open the
MLflow run, fit on Ray Train (each worker runs `training/recipe.py`), score the test split with the best
checkpoint, log the model, finish the MLflow run."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from model import format_metrics_table
from orchestrator import storage
from orchestrator.cluster import check_run, cluster_shape, tracking_host
from orchestrator.config import SELECTION_METRIC, RunConfig
from orchestrator.config_io import dump_config, flatten_config
from orchestrator.tracking.plots import log_training_plots
from orchestrator.tracking.server import tracking_server
from orchestrator.tracking.tracker import Tracker, find_run_by_name, log_best_model, resolve_tracking_uri
from orchestrator.training import checkpoint
from orchestrator.training.payload import WorkerPayload, run_worker
from orchestrator.training.scoring import score_checkpoint
from orchestrator.training.sharding import ShareValidation
from pipelines.dataset import PreparedData, eval_dataset, prepare_data, train_dataset


def fit(run: RunConfig, project_dir: Path | None = None) -> dict[str, float]:
    """Train `run`, or resume it when a run of that name already has storage; returns the test metrics."""
    project_dir = project_dir or Path.cwd()
    store = resolve_tracking_uri(run.tracking.tracking_uri, project_dir)
    shape = cluster_shape()
    check_run(run, shape, store)  # before any cluster work
    # On a cluster, a sqlite store is served from the driver's private address, where other nodes log.
    served = tracking_server(store, host=tracking_host(shape), log_dir=project_dir)
    with served if shape.multi_node else nullcontext(store) as uri:
        return _fit(run, uri)


def _fit(run: RunConfig, uri: str) -> dict[str, float]:
    data = prepare_data(run.data, run.model.frames_per_group)
    tracker = open_tracking_run(run, data, uri)
    try:
        metrics = _train_and_score(run, data, tracker)
    except BaseException:
        # Whatever fails, training or the scoring and model logging after it, the run never stays RUNNING.
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    print(f"\nMLflow run {tracker.run_id} ({run.tracking.experiment} / {run.name}) at {uri}", flush=True)
    if uri.startswith("sqlite:"):
        print("  to browse it: `make mlflow-ui`, then open http://127.0.0.1:5000", flush=True)
    return metrics


def _train_and_score(run: RunConfig, data: PreparedData, tracker: Tracker) -> dict[str, float]:
    result = make_trainer(run, data, tracker).fit()
    best = result.best_checkpoints[0][0] if result.best_checkpoints else result.checkpoint
    metrics = {}
    if "test" in data.splits:
        test = score_checkpoint(best, run, data, "test")
        metrics = {f"test_{k}": v for k, v in test.items()}
        tracker.log_metrics(metrics, total_steps(run, data))
        table = format_metrics_table(test, num_videos=len(data.splits["test"].videos))
        print("\ntest (best checkpoint by validation t2v R@1):\n" + table, flush=True)
        if run.reference:
            print(f"compare: {run.reference}", flush=True)
    tracker.log_dict_artifact(metrics | (result.metrics or {}), "final_metrics.json")
    log_training_plots(tracker, metrics)
    with best.as_directory() as folder:
        log_best_model(
            tracker,
            Path(folder) / "model.safetensors",
            dump_config(run),
            run.tracking.register_as,
            run.tracking.alias,
        )
    return metrics


def open_tracking_run(
    run: RunConfig, data: PreparedData, uri: str, parent_run_id: str | None = None
) -> Tracker:
    """The MLflow run of this training job: a new one, or the one of the same name when its storage exists.

    `parent_run_id` nests the run under a sweep's run.
    """
    for split in ("train", "val"):
        if split not in data.splits:
            raise ValueError(
                f"the manifest {run.data.manifest} has no {split} split; see promptswitch data prepare"
            )
    # A sweep's trial names are unique to it, so a trial always continues its run: it may have been cut
    # short before its Ray Train storage existed.
    resuming = parent_run_id is not None or storage.exists(storage.run_folder(run))
    run_id = find_run_by_name(uri, run.tracking.experiment, run.name) if resuming else None
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    tracker = Tracker.start(
        uri, run.tracking.experiment, run.name, run_id, params=flatten_config(run), tags=tags
    )
    if run_id is None:
        tracker.log_text(dump_config(run), "config.yaml")
    tracker.log_dict_artifact(data.report.as_dict(), "bad_videos.json")
    print(f"MLflow run {tracker.run_id} ({'resumed' if run_id else 'new'}) at {uri}", flush=True)
    return tracker


def total_steps(run: RunConfig, data: PreparedData) -> int:
    steps_per_epoch = len(data.splits["train"].captions) // run.train.batch_size
    steps = min(run.train.max_steps or 2**62, run.train.epochs * steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"train.batch_size={run.train.batch_size} is larger than the training set "
            f"({len(data.splits['train'].captions)} captions)"
        )
    return steps


def make_trainer(
    run: RunConfig, data: PreparedData, tracker: Tracker, callbacks=(), label: str = ""
) -> TorchTrainer:
    """The Ray Train job of `run`: workers, datasets, checkpoints kept by validation t2v R@1, retries."""
    filesystem, storage_path = storage.location(run.storage_path)
    return TorchTrainer(
        run_worker,
        train_loop_config={
            "payload": WorkerPayload(
                run=run,
                total_steps=total_steps(run, data),
                tracking_uri=tracker.uri,
                mlflow_run_id=tracker.run_id,
                latest_checkpoint=storage.latest_checkpoint(storage.run_folder(run), checkpoint.CONFIG_FILE),
                val_captions=data.splits["val"].captions.select(["video_index", "caption"]),
                label=label,
            )
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.train.num_workers,
            use_gpu=run.train.use_gpu,
            resources_per_worker={"CPU": run.train.cpus_per_worker}
            | ({"GPU": 1} if run.train.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.train.num_checkpoints,
                checkpoint_score_attribute=SELECTION_METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=run.train.max_failures),
            callbacks=list(callbacks),
        ),
        datasets={
            "train": train_dataset(data, run.data, run.model.frames_per_group),
            "val": eval_dataset(data, run.data, run.model.frames_per_group, "val"),
        },
        dataset_config=ShareValidation(datasets_to_split=["train"]),
    )
