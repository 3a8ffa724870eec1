"""May a run of an existing name continue? Its stored config against the new one, before Ray starts.

A run continues from its latest checkpoint when the same name is trained again. What it may change on the
way is what decides how long it trains and with what resources (`MAY_CHANGE`); anything else changes the
model, the data or the optimisation the checkpoint was made with, and is refused with the keys that differ
and what to do instead: another name, or `--fresh` to start this name again (the old checkpoints are moved
aside, never deleted).
"""

from __future__ import annotations

import time

import yaml

from model.config import ConfigError
from orchestrator import storage
from orchestrator.config import RunConfig
from orchestrator.config_io import config_to_dict
from orchestrator.training.checkpoint import CONFIG_FILE

MAY_CHANGE = (
    # the budget
    "train.epochs",
    "train.max_steps",
    "train.eval_every_steps",
    "train.log_every_steps",
    "train.num_checkpoints",
    "train.max_failures",
    # the resources (the global batch stays what it was)
    "train.num_workers",
    "train.cpus_per_worker",
    "train.use_gpu",
    "train.compile",
    "train.grad_compression",
    "data.decode_batch_size",
    "data.max_bad_fraction",
    "data.cache_dir",
    # where the pretrained weights were read from (the checkpoint's replace them) and where it logs
    "model.pretrained",
    "tracking.tracking_uri",
    "tracking.experiment",
    "tracking.register_as",
    "tracking.alias",
    "reference",
)


class ResumeConflict(ConfigError):
    """The stored run was made with a config this run may not continue with."""


def check_resume(run: RunConfig, *, fresh: bool = False) -> str | None:
    """None when `run` starts new or may continue its stored run; with `fresh`, the stored run is moved
    aside first and its new place returned. Raises ResumeConflict when the configs differ where they may
    not."""
    folder = storage.run_folder(run)
    if fresh and storage.exists(folder):
        return storage.move_aside(folder, time.strftime("replaced-%Y%m%d-%H%M%S"))
    latest = storage.latest_checkpoint(folder, CONFIG_FILE)
    if latest is None:
        return None
    stored = storage.read_text(storage.join(latest, CONFIG_FILE))
    changed = differences(yaml.safe_load(stored) or {}, config_to_dict(run))
    if changed:
        detail = "\n".join(f"  {key}: {before!r} -> {after!r}" for key, (before, after) in changed.items())
        raise ResumeConflict(
            f"run {run.name!r} has checkpoints in {folder} made with another configuration:\n{detail}\n"
            "These change the model, the data or the optimisation, so the run cannot continue with them. "
            "Use another name (name=...), or --fresh to start this one again from step 0 (its checkpoints "
            "are moved aside, not deleted). Only these may change on resume: " + ", ".join(MAY_CHANGE)
        )
    return None


def differences(stored: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (stored value, new value)} where they differ, leaving out `MAY_CHANGE`. A key the stored
    config lacks (a field added since it was written) is not compared."""
    before, after = _flat(stored), _flat(new)
    ignored = {*MAY_CHANGE, "name", "storage_path"}
    return {
        key: (before[key], value)
        for key, value in after.items()
        if key in before and key not in ignored and before[key] != value
    }


def _flat(d: dict) -> dict:
    out = {}
    for key, value in d.items():
        for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
            out[key if sub is None else f"{key}.{sub}"] = list(v) if isinstance(v, tuple) else v
    return out
