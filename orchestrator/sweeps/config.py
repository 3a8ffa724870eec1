"""A sweep: a training preset, the trials' budget, the search space, the search and early stopping.

    name: sweep-demo
    base: scratch.yaml                    # the training preset (relative to this file); the full budget
    base_overrides: []                    # key=value changes to it, kept in the best configuration
    trial_overrides: [train.max_steps=80] # each trial's shorter budget, not kept in the best configuration
    search: {algorithm: tpe, num_samples: 6, max_concurrent: null, seed: 0}
    early_stopping: {grace_period: 1, reduction_factor: 2}    # ASHA, in evaluations
    space:
      model.frames_per_group: {choice: [2, 3, 6]}
      model.caption_weight: {uniform: [0.0, 1.0]}
      train.new_lr: {loguniform: [1.0e-4, 3.0e-3]}

Everything is checked before Ray starts: the space's keys and every choice and bound go through the training
configuration's own validation, so a bad value names its key and what is allowed.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.config import ConfigError, require
from orchestrator.config import RunConfig
from orchestrator.config_io import apply_overrides, load_config, read_yaml

ALGORITHMS = ("tpe", "random", "grid")
DISTRIBUTIONS = ("choice", "uniform", "loguniform")
# The prompt size sets how many groups make up the sampled frames, which stay as many as in the preset.
PROMPT_SIZE = "model.frames_per_group"
_TOP_KEYS = ("name", "base", "base_overrides", "trial_overrides", "search", "early_stopping", "space")
_SEARCH_KEYS = ("algorithm", "num_samples", "max_concurrent", "seed")
_EARLY_KEYS = ("grace_period", "reduction_factor")


@dataclass(frozen=True)
class Param:
    key: str  # a training config key, e.g. "model.caption_weight"
    distribution: str  # one of DISTRIBUTIONS
    values: tuple  # the choices, or (low, high)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    base_path: str
    # The preset as read by the driver, its relative paths resolved against the driver's working directory:
    # trials apply their overrides to it and never read the file again where those paths mean something else.
    preset: RunConfig
    base_overrides: tuple[str, ...]
    trial_overrides: tuple[str, ...]
    space: tuple[Param, ...]
    algorithm: str = "tpe"
    num_samples: int = 8  # trials; for grid, runs of the whole grid (default 1)
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs or GPUs hold
    seed: int = 0
    grace_period: int = 1  # evaluations every trial gets before ASHA may stop it
    reduction_factor: int = 2

    def base(self) -> RunConfig:
        """The training configuration the best parameters go into: the preset with its full budget."""
        return apply_overrides(self.preset, self.base_overrides)

    def trial_config(self, params: dict[str, Any], name: str, storage_path: str) -> RunConfig:
        """A trial's training configuration: the preset, the trials' budget, then `params`."""
        overrides = [*self.base_overrides, *self.trial_overrides, *self.param_overrides(params)]
        return apply_overrides(self.preset, [*overrides, f"name={name}", f"storage_path={storage_path}"])

    def base_trial(self) -> RunConfig:
        """A trial's configuration before its parameters: what every trial's budget and resources are."""
        return self.trial_config({}, f"{self.name}-trial", self.base().storage_path)

    def param_overrides(self, params: dict[str, Any]) -> list[str]:
        """`key=value` overrides for `params`, with the frame groups that keep the frame counts."""
        out = [f"{key}={_yaml_scalar(value)}" for key, value in params.items()]
        if PROMPT_SIZE in params:
            base = self.base()
            size = int(params[PROMPT_SIZE])
            train_frames = base.model.frames_per_group * base.data.train_groups
            eval_frames = base.model.frames_per_group * base.data.eval_groups
            out += [f"data.train_groups={train_frames // size}", f"data.eval_groups={eval_frames // size}"]
        return out

    def full_config(self, params: dict[str, Any], name: str) -> RunConfig:
        """`params` in the preset with its full budget (no trial overrides): what the best trial suggests."""
        return apply_overrides(self.preset, self._full_overrides(params, name))

    def full_training_command(self, params: dict[str, Any], name: str) -> str:
        """The command that trains `full_config(params, name)`."""
        overrides = self._full_overrides(params, name)
        relative = os.path.relpath(self.base_path)
        config = self.base_path if relative.startswith("..") else relative
        return shlex.join(["promptswitch", "train", "--config", config, *overrides])

    def _full_overrides(self, params: dict[str, Any], name: str) -> list[str]:
        return [*self.base_overrides, *self.param_overrides(params), f"name={name}"]


def load_sweep(path: str | Path, *, name: str | None = None, num_samples: int | None = None) -> SweepConfig:
    """The sweep at `path`, every value checked; `name` and `num_samples` replace the file's."""
    path = Path(path)
    raw = read_yaml(path, "sweep config")
    _check_keys(raw, _TOP_KEYS, "sweep")
    search, early = raw.get("search") or {}, raw.get("early_stopping") or {}
    _check_keys(search, _SEARCH_KEYS, "search")
    _check_keys(early, _EARLY_KEYS, "early_stopping")
    require("base" in raw, "base", None, "the training preset the trials start from, e.g. scratch.yaml")
    base_path = (path.parent / str(raw["base"])).resolve()
    algorithm = search.get("algorithm", "tpe")
    if not base_path.is_file():
        raise FileNotFoundError(f"base: training preset not found: {base_path}")
    sweep = SweepConfig(
        name=str(name or raw.get("name") or path.stem),
        base_path=str(base_path),
        preset=load_config(base_path),
        base_overrides=_string_list(raw, "base_overrides"),
        trial_overrides=_string_list(raw, "trial_overrides"),
        space=_space(raw.get("space")),
        algorithm=algorithm,
        num_samples=int(num_samples or search.get("num_samples", 1 if algorithm == "grid" else 8)),
        max_concurrent=search.get("max_concurrent"),
        seed=int(search.get("seed", 0)),
        grace_period=int(early.get("grace_period", 1)),
        reduction_factor=int(early.get("reduction_factor", 2)),
    )
    validate(sweep)
    return sweep


def validate(sweep: SweepConfig) -> None:
    require(sweep.algorithm in ALGORITHMS, "search.algorithm", sweep.algorithm, ", ".join(ALGORITHMS))
    require(sweep.num_samples >= 1, "search.num_samples", sweep.num_samples, "an integer >= 1")
    require(
        sweep.max_concurrent is None or (isinstance(sweep.max_concurrent, int) and sweep.max_concurrent >= 1),
        "search.max_concurrent",
        sweep.max_concurrent,
        "an integer >= 1, or null to fit the cluster",
    )
    require(sweep.grace_period >= 1, "early_stopping.grace_period", sweep.grace_period, "an integer >= 1")
    require(
        sweep.reduction_factor >= 2,
        "early_stopping.reduction_factor",
        sweep.reduction_factor,
        "an integer >= 2",
    )
    if sweep.algorithm == "grid":
        for p in sweep.space:
            require(p.distribution == "choice", f"space.{p.key}", p.distribution, "choice (grid search)")
    base = sweep.base()
    for p in sweep.space:
        if p.key == PROMPT_SIZE:
            _check_prompt_sizes(p, base)
        for value in p.values:  # the training config's checks on every choice, or on both ends of a range
            sweep.trial_config({p.key: value}, f"{sweep.name}-trial", base.storage_path)
    trial = sweep.base_trial()
    require(
        trial.train.eval_every_steps is not None,
        "trial_overrides",
        list(sweep.trial_overrides),
        "a budget that sets train.eval_every_steps: early stopping compares trials at each evaluation",
    )


def _check_prompt_sizes(p: Param, base: RunConfig) -> None:
    train_frames = base.model.frames_per_group * base.data.train_groups
    eval_frames = base.model.frames_per_group * base.data.eval_groups
    require(p.distribution == "choice", f"space.{p.key}", p.distribution, "choice (a few prompt sizes)")
    for size in p.values:
        require(
            isinstance(size, int) and size >= 1 and train_frames % size == 0 and eval_frames % size == 0,
            f"space.{p.key}",
            size,
            f"divisors of the preset's frame counts ({train_frames} training, {eval_frames} evaluation "
            "frames), which every prompt size keeps",
        )


def _space(raw) -> tuple[Param, ...]:
    require(isinstance(raw, dict) and raw, "space", raw, "a mapping of config keys to {choice|uniform|...}")
    params = []
    for key, spec in raw.items():
        where = f"space.{key}"
        require(
            isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS,
            where,
            spec,
            f"one of {{{' | '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}",
        )
        ((distribution, values),) = spec.items()
        require(isinstance(values, list) and values, where, spec, "a non-empty list")
        if distribution != "choice":
            require(
                len(values) == 2
                and all(isinstance(v, (int, float)) for v in values)
                and values[0] < values[1],
                where,
                spec,
                "[low, high] with low < high",
            )
        if distribution == "loguniform":
            require(values[0] > 0, where, spec, "[low, high] with 0 < low (log scale)")
        params.append(Param(str(key), distribution, tuple(values)))
    return tuple(params)


def _check_keys(raw, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping; allowed keys: {', '.join(allowed)}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown {where} key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _string_list(raw: dict, key: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    require(isinstance(value, list), key, value, "a list of key=value strings")
    return tuple(str(v) for v in value)


def _yaml_scalar(value) -> str:
    # YAML's own spelling: PyYAML reads "1e-05" as a string, "1.0e-05" as the float; repr keeps every digit.
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
