"""Configurations a run cannot use are refused before Ray starts, naming the key and what is allowed."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from orchestrator.config_io import load_config
from orchestrator.preflight import check_before_ray

ROOT = Path(__file__).parents[2]


def _run(manifest, *overrides):
    return load_config(ROOT / "configs" / "scratch.yaml", [f"data.manifest={manifest}", *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_workers=0", "train.num_workers=0 is invalid; allowed: an integer >= 1"),
        ("data.image_size=63", "data.image_size=63 is invalid; allowed: 64, model tiny's input size"),
        ("tracking.tracking_uri=ftp://x", "tracking.tracking_uri='ftp://x' is invalid; allowed: a folder"),
        ("train.batch_size=15", "train.batch_size=15 is invalid; allowed: a multiple of train.grad_accum x"),
        ("data.cache_short_side=32", "data.cache_short_side=32 is invalid; allowed: an integer >= the model"),
    ],
)
def test_values_the_run_cannot_use_are_refused_when_the_config_loads(synth, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _run(synth, override)


def test_the_input_size_follows_from_the_model(synth):
    assert _run(synth).data.image_size == 64
    assert _run(synth, "model.name=ViT-B-32", "data.cache_short_side=224").data.image_size == 224


def test_a_batch_larger_than_the_training_split_is_refused(synth):
    with pytest.raises(ConfigError, match="train.batch_size=64 is invalid; allowed: at most the training"):
        check_before_ray(_run(synth, "train.batch_size=64"), None)  # 15 training videos, 30 captions


def test_a_manifest_without_a_validation_split_is_refused(synth, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(synth)
    pq.write_table(table.filter(pc.not_equal(table["split"], "val")), tmp_path / "m.parquet")
    with pytest.raises(ConfigError, match="has no val split"):
        check_before_ray(_run(tmp_path / "m.parquet"), None)


def test_missing_weights_and_a_silent_tracking_server_are_refused(synth, tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained='/nowhere/w.pt' does not exist; expected a"):
        check_before_ray(_run(synth, "model.pretrained=/nowhere/w.pt"), None)
    started = time.time()
    with pytest.raises(ConfigError, match="tracking.tracking_uri=http://127.0.0.1:1 does not answer"):
        check_before_ray(_run(synth, "tracking.tracking_uri=http://127.0.0.1:1"), None)
    assert time.time() - started < 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_asked_for_on_a_machine_without_them_are_refused(synth):
    run = _run(synth, "train.use_gpu=true", "train.precision=bf16")
    with pytest.raises(ConfigError, match="train.use_gpu=true asks for 2 GPU worker"):
        check_before_ray(run, None)


@pytest.mark.parametrize(
    "override",
    ["train.num_workers=0", "data.image_size=63", "tracking.tracking_uri=ftp://x", "train.batch_size=64"],
)
def test_the_command_refuses_them_in_seconds_without_starting_ray(synth, tmp_path, override):
    started = time.time()
    argv = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "scratch.yaml"),
            f"data.manifest={synth}", f"storage_path={tmp_path / 'runs'}", override]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert override.split("=")[0] in done.stderr and "Traceback" not in done.stderr
    assert "Ray:" not in done.stdout and not (tmp_path / "runs").exists()
    assert time.time() - started < 10
