"""The run configuration: one typed object from the YAML preset and the command line into every component.

`RunConfig` nests the model's and the data's own config objects, so `model.build_model(run.model)` and the
pipelines take exactly what the user wrote; loading and overrides live in `orchestrator/config_io.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from model.config import ModelConfig, require
from pipelines.config import DataConfig

PRECISIONS = ("fp32", "bf16", "fp16")
COMPRESSIONS = ("none", "bf16", "fp16")  # of DDP's gradient all-reduce (training/grad_sync.py)
# What picks a run's best checkpoint and a sweep's best trial: validation text-to-video R@1.
SELECTION_METRIC = "val_t2v_recall_at_1"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the Ray Train job. Defaults are the paper's (docs/model.md §4)."""

    epochs: int = 5
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs, the demo)
    batch_size: int = 32  # videos per optimiser step, over all workers together
    grad_accum: int = 1  # micro-batches per optimiser step (each batch_size / grad_accum videos)
    clip_lr: float = 1e-6  # pretrained CLIP weights
    new_lr: float = 1e-5  # prompt cube, aggregation, caption head
    official_grouping: bool = False  # the official code's parameter split (aggregation at clip_lr)
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup_fraction: float = 0.1  # linear warm-up, then cosine, stepped every optimiser step
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 on CPU; bf16 or fp16 autocast on GPUs
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    eval_every_steps: int | None = None  # None: evaluate at the end of every epoch
    num_checkpoints: int = 2  # kept by Ray Train, best by validation t2v R@1
    # Worker failures (a lost node, a preempted GPU) retried from the last checkpoint; -1: without limit.
    max_failures: int = 3
    compile: bool = False  # torch.compile the video and text towers (GPUs; the first steps compile)
    grad_compression: str = "none"  # DDP gradient all-reduce in bf16 or fp16: halves the bytes between nodes
    seed: int = 24
    log_every_steps: int = 10

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        require(
            self.max_steps is None or self.max_steps >= 1, "train.max_steps", self.max_steps, ">= 1 or null"
        )
        require(self.batch_size >= 2, "train.batch_size", self.batch_size, "an integer >= 2 (contrastive)")
        require(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "an integer >= 1")
        require(self.num_workers >= 1, "train.num_workers", self.num_workers, "an integer >= 1")
        require(
            self.batch_size % (self.grad_accum * self.num_workers) == 0,
            "train.batch_size",
            self.batch_size,
            f"a multiple of train.grad_accum x train.num_workers ({self.grad_accum} x {self.num_workers})",
        )
        require(self.clip_lr >= 0, "train.clip_lr", self.clip_lr, "a number >= 0")
        require(self.new_lr >= 0, "train.new_lr", self.new_lr, "a number >= 0")
        require(0 <= self.warmup_fraction < 1, "train.warmup_fraction", self.warmup_fraction, "in [0, 1)")
        require(self.grad_clip > 0, "train.grad_clip", self.grad_clip, "a number > 0")
        require(self.precision in PRECISIONS, "train.precision", self.precision, ", ".join(PRECISIONS))
        require(
            self.precision == "fp32" or self.use_gpu,
            "train.precision",
            self.precision,
            "fp32 when train.use_gpu is false (mixed precision is for GPUs)",
        )
        require(self.cpus_per_worker > 0, "train.cpus_per_worker", self.cpus_per_worker, "a number > 0")
        require(
            self.eval_every_steps is None or self.eval_every_steps >= 1,
            "train.eval_every_steps",
            self.eval_every_steps,
            ">= 1 or null",
        )
        require(self.num_checkpoints >= 1, "train.num_checkpoints", self.num_checkpoints, "an integer >= 1")
        require(self.max_failures >= -1, "train.max_failures", self.max_failures, "an integer >= 0, or -1")
        require(
            self.grad_compression in COMPRESSIONS,
            "train.grad_compression",
            self.grad_compression,
            ", ".join(COMPRESSIONS),
        )
        require(self.log_every_steps >= 1, "train.log_every_steps", self.log_every_steps, "an integer >= 1")


# Where MLflow can keep runs: a folder (no scheme, or file:), a database, or a tracking server.
TRACKING_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. With no URI here or in $MLFLOW_TRACKING_URI, a sqlite store in the project folder."""

    tracking_uri: str | None = None
    experiment: str = "promptswitch"
    register_as: str | None = None  # registered model name for the best model; None: do not register
    alias: str = "best"  # alias given to the registered version

    def __post_init__(self) -> None:
        uri = self.tracking_uri
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if uri and "://" in uri else ""
        require(
            scheme in TRACKING_SCHEMES,
            "tracking.tracking_uri",
            uri,
            "a folder, file:, sqlite:, postgresql:, mysql:, mssql:, http(s): or databricks URI",
        )
        require(bool(self.experiment), "tracking.experiment", self.experiment, "a non-empty name")


@dataclass(frozen=True)
class RunConfig:
    name: str = "promptswitch"  # the Ray Train run name: the same name again resumes that run
    storage_path: str = "runs"  # where Ray Train keeps checkpoints (a shared path on a cluster)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Printed under the test table: the figure to read the result against (a baseline's, the paper's).
    reference: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name without '/'")
        require(bool(self.data.manifest), "data.manifest", self.data.manifest, "the path of a manifest")
        # The crop fed to the model is the model's input size: derived, and refused where it is set otherwise.
        size = self.model.image_size
        require(
            self.data.image_size in (None, size),
            "data.image_size",
            self.data.image_size,
            f"{size}, model {self.model.name}'s input size (or leave it out: it follows from the model)",
        )
        object.__setattr__(self, "data", replace(self.data, image_size=size))
