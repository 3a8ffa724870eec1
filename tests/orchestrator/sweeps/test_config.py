"""Sweep configurations: parsed, checked before Ray starts, turned into trial and full-training configs."""

from pathlib import Path

import pytest
import yaml

from model.config import ConfigError
from orchestrator.config_io import load_config
from orchestrator.sweeps.config import load_sweep

ROOT = Path(__file__).parents[3]
SCRATCH = ROOT / "configs" / "scratch.yaml"


def write(tmp_path, **fields) -> Path:
    raw = {
        "name": "s",
        "base": str(SCRATCH),
        "trial_overrides": ["train.max_steps=8", "train.eval_every_steps=4"],
        "space": {"model.caption_weight": {"uniform": [0.0, 1.0]}},
    } | fields
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_demo_sweep_loads():
    sweep = load_sweep(ROOT / "configs" / "sweep-demo.yaml")
    assert (sweep.name, sweep.algorithm, sweep.num_samples) == ("sweep-demo", "tpe", 6)
    assert {p.key for p in sweep.space} >= {"model.frames_per_group", "model.caption_weight", "train.new_lr"}


def test_trial_config_applies_budget_then_params(tmp_path):
    sweep = load_sweep(write(tmp_path))
    run = sweep.trial_config({"model.caption_weight": 0.123456789}, "s-1", str(tmp_path / "trials"))
    assert run.name == "s-1" and run.storage_path == str(tmp_path / "trials")
    assert run.train.max_steps == 8 and run.model.caption_weight == 0.123456789
    full = sweep.full_config({"model.caption_weight": 0.123456789}, "s-best")
    assert full.train.max_steps == load_config(SCRATCH).train.max_steps  # the trials' budget is not kept
    assert full.model.caption_weight == 0.123456789


def test_prompt_size_keeps_the_frame_counts(tmp_path):
    sweep = load_sweep(write(tmp_path, space={"model.frames_per_group": {"choice": [2, 3, 6]}}))
    run = sweep.trial_config({"model.frames_per_group": 2}, "t", str(tmp_path))
    assert (run.data.train_groups, run.data.eval_groups) == (3, 6)  # 6 training, 12 evaluation frames
    command = sweep.full_training_command({"model.frames_per_group": 3}, "s-best")
    assert "model.frames_per_group=3 data.train_groups=2 data.eval_groups=4 name=s-best" in command
    with pytest.raises(ConfigError, match=r"space.model.frames_per_group=4 .* divisors"):
        load_sweep(write(tmp_path, space={"model.frames_per_group": {"choice": [2, 4]}}))


def test_small_floats_round_trip_through_the_overrides(tmp_path):
    sweep = load_sweep(write(tmp_path, space={"train.new_lr": {"loguniform": [1.0e-6, 1.0e-3]}}))
    assert sweep.trial_config({"train.new_lr": 1.2345e-05}, "t", str(tmp_path)).train.new_lr == 1.2345e-05


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"search": {"algorithm": "bayes"}}, r"search.algorithm='bayes' .* tpe, random, grid"),
        ({"search": {"samples": 3}}, r"unknown search key 'samples'; allowed: algorithm, num_samples"),
        ({"space": {"model.caption_weight": {"normal": [0, 1]}}}, r"space.model.caption_weight=.*choice"),
        ({"space": {"model.caption_weight": {"uniform": [1, 0]}}}, r"low < high"),
        ({"space": {"train.new_lr": {"loguniform": [0, 1]}}}, r"0 < low"),
        ({"space": {"model.caption_weight": {"uniform": [-1, 1]}}}, r"model.caption_weight=-1"),  # own range
        ({"space": {"train.nope": {"choice": [1]}}}, r"unknown key 'train.nope'"),
        ({"space": {"train.precision": {"choice": ["fp64"]}}}, r"train.precision='fp64'"),
        (
            {"search": {"algorithm": "grid"}, "space": {"model.caption_weight": {"uniform": [0, 1]}}},
            r"choice \(grid search\)",
        ),
        ({"trial_overrides": ["train.eval_every_steps=null"]}, r"sets train.eval_every_steps"),
        ({"early_stopping": {"reduction_factor": 1}}, r"early_stopping.reduction_factor=1"),
        ({"colour": "red"}, r"unknown sweep key 'colour'"),
    ],
)
def test_bad_sweeps_name_the_key_and_what_is_allowed(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, **fields))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep config not found"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="training preset not found"):
        load_sweep(write(tmp_path, base="nope.yaml"))
