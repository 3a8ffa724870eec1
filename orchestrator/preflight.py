"""A run checked against the world before Ray starts: what it cannot use fails in seconds, naming the key.

The config objects check their own values and the rules between them when they are built. This checks what
they cannot see alone: the manifest (that it is one, its splits, the training split against the batch),
local pretrained weights, the tracking store (a server must answer), and GPUs asked for on a machine that has
none. What needs the cluster (shared paths, GPUs a cluster may add) is `orchestrator.cluster.check_run`'s.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.config import ConfigError
from orchestrator.config import RunConfig
from orchestrator.tracking.tracker import resolve_tracking_uri
from pipelines.manifest import check_manifest

SERVER_TIMEOUT_S = 5.0


def check_before_ray(run: RunConfig, address: str | None, *, splits=("train", "val")) -> str:
    """Refuse what `run` cannot use; returns the tracking URI it will log to."""
    _check_manifest(run, splits)
    pretrained = run.model.pretrained
    if pretrained and "://" not in pretrained and not Path(pretrained).exists():
        raise ConfigError(
            f"model.pretrained={pretrained!r} does not exist; expected a local CLIP weights file (OpenAI .pt "
            "or open_clip .bin/.safetensors) or a Hugging Face CLIPModel folder: nothing is downloaded"
        )
    uri = resolve_tracking_uri(run.tracking.tracking_uri, Path.cwd())
    check_tracking_server(uri)
    if run.train.use_gpu and not (address or os.environ.get("RAY_ADDRESS")):
        import torch

        gpus = torch.cuda.device_count()
        if gpus < run.train.num_workers:
            raise ConfigError(
                f"train.use_gpu=true asks for {run.train.num_workers} GPU worker(s) and this machine has "
                f"{gpus} GPU(s); allowed: train.use_gpu=false here, or --address of a cluster with GPUs"
            )
    return uri


def _check_manifest(run: RunConfig, splits) -> None:
    check_manifest(run.data.manifest)
    split = pq.read_table(run.data.manifest, columns=["split"])["split"]
    missing = [s for s in splits if not pc.any(pc.equal(split, s)).as_py()]
    if missing:
        raise ConfigError(
            f"data.manifest={run.data.manifest} has no {' or '.join(missing)} split; "
            "see `promptswitch data prepare --val-fraction`"
        )
    if "train" in splits:
        captions = pc.sum(pc.equal(split, "train")).as_py()
        if captions < run.train.batch_size:
            raise ConfigError(
                f"train.batch_size={run.train.batch_size} is invalid; allowed: at most the training split's "
                f"{captions} captions (a step takes a whole batch)"
            )


def check_tracking_server(uri: str) -> None:
    """An http(s) tracking server must answer MLflow's health check within SERVER_TIMEOUT_S."""
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S) as answer:
            if answer.status == 200:
                return
            reason = f"HTTP {answer.status}"
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, "reason", e))
    raise ConfigError(
        f"tracking.tracking_uri={uri} does not answer ({reason}); start the server (`mlflow server --host "
        "127.0.0.1`), or leave tracking_uri unset for a sqlite store in the project folder"
    )
