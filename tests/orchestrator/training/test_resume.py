"""Resuming a run name: budget and resources may change; the model, the data or the optimisation may not."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config_io import dump_config, load_config
from orchestrator.training.resume import ResumeConflict, check_resume

ROOT = Path(__file__).parents[3]


def _run(synth, tmp_path, *overrides):
    return load_config(
        ROOT / "configs" / "scratch.yaml",
        [f"data.manifest={synth}", f"storage_path={tmp_path / 'runs'}", "name=r", *overrides],
    )


def _stored(run, *steps):
    for step in steps:
        folder = Path(run.storage_path) / run.name / f"checkpoint_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(dump_config(run))


def test_a_new_name_or_the_same_config_continues(synth, tmp_path):
    run = _run(synth, tmp_path)
    assert check_resume(run) is None  # nothing stored
    _stored(run, 0)
    assert check_resume(run) is None


def test_the_budget_and_the_resources_may_change(synth, tmp_path):
    _stored(_run(synth, tmp_path), 0)
    more = _run(synth, tmp_path, "train.max_steps=900", "train.eval_every_steps=25", "train.num_workers=1",
                "data.decode_batch_size=4", "tracking.register_as=demo")  # fmt: skip
    assert check_resume(more) is None


def test_another_model_or_optimisation_is_refused_naming_the_keys(synth, tmp_path):
    _stored(_run(synth, tmp_path), 0)
    with pytest.raises(ResumeConflict) as refused:
        check_resume(_run(synth, tmp_path, "model.frames_per_group=4", "train.new_lr=0.01"))
    message = str(refused.value)
    assert "model.frames_per_group: 6 -> 4" in message and "train.new_lr: 0.001 -> 0.01" in message
    assert "--fresh" in message and "name=" in message


def test_the_latest_checkpoint_speaks_for_the_run(synth, tmp_path):
    _stored(_run(synth, tmp_path, "model.frames_per_group=4"), 0)
    (tmp_path / "runs" / "r" / "checkpoint_000000").rename(tmp_path / "runs" / "r" / "checkpoint_000009")
    _stored(_run(synth, tmp_path), 3)
    with pytest.raises(ResumeConflict, match="model.frames_per_group: 4 -> 6"):
        check_resume(_run(synth, tmp_path))


def test_fresh_moves_the_stored_run_aside(synth, tmp_path):
    _stored(_run(synth, tmp_path), 0)
    moved = check_resume(_run(synth, tmp_path, "model.frames_per_group=4"), fresh=True)
    assert moved.startswith(str(tmp_path / "runs" / "r.replaced-"))
    assert (Path(moved) / "checkpoint_000000" / "config.yaml").is_file()
    assert not (tmp_path / "runs" / "r").exists()


def test_the_command_refuses_another_model_shape_before_ray_starts(synth, tmp_path):
    _stored(_run(synth, tmp_path), 0)
    started = time.time()
    argv = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "scratch.yaml"),
            "name=r", f"data.manifest={synth}", f"storage_path={tmp_path / 'runs'}",
            "model.frames_per_group=4"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.frames_per_group: 6 -> 4" in done.stderr and "Traceback" not in done.stderr
    assert "Ray:" not in done.stdout and time.time() - started < 10
