"""Run config loading: presets, overrides, errors, paths, and the dict/YAML/flat round trips (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import ConfigError
from orchestrator.config import RunConfig, TrainConfig
from orchestrator.config_io import (
    config_from_dict,
    config_to_dict,
    dump_config,
    flatten_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Training presets (not the sweeps, nor paper.yaml: the base the dataset presets start from).
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("sweep-") and p.stem != "paper")
PAPER = [p for p in PRESETS if p.stem not in ("demo", "scratch")]


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    datasets = ("msrvtt-9k", "msrvtt-7k", "msvd", "lsmdc")
    assert names == {"demo", "scratch"} | {f"{d}-{a}" for d in datasets for a in ("b32", "b16")}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing the preset names needs to exist
    config = load_config(path)
    assert config.name == path.stem
    assert Path(config.data.manifest).is_absolute() and Path(config.storage_path).is_absolute()
    assert "clip" not in config_to_dict(config)["model"]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_presets_follow_spec(path):
    c = load_config(path)
    arch = path.stem.rsplit("-", 1)[1][1:]
    assert c.model.name == f"ViT-B-{arch}-quickgelu" and c.model.pretrained.endswith(f"ViT-B-{arch}.pt")
    assert (c.train.batch_size, c.train.epochs, c.train.clip_lr, c.train.new_lr) == (32, 5, 1e-6, 1e-5)
    assert (c.train.betas, c.train.eps, c.train.weight_decay) == ((0.9, 0.999), 1e-6, 0.2)
    assert (c.train.warmup_fraction, c.train.grad_clip, c.train.seed) == (0.1, 1.0, 24)
    assert (c.model.frames_per_group, c.data.train_groups, c.data.eval_groups) == (6, 1, 2)
    assert (c.model.caption_weight, c.model.caption_layers, c.model.frequent_word_weight) == (0.5, 2, 0.25)
    assert c.train.use_gpu and c.train.precision == "bf16" and c.train.eval_every_steps is None
    assert c.data.image_size == 224 and c.data.manifest.endswith(f"{path.stem.rsplit('-', 1)[0]}.parquet")


def test_the_paper_presets_differ_only_in_their_data_and_backbone():
    base = flatten_config(load_config(CONFIGS / "paper.yaml", ["data.manifest=x.parquet"]))
    for path in PAPER:
        preset = flatten_config(load_config(path))
        differ = {k for k, v in preset.items() if v != base[k]}
        assert differ <= {"name", "data.manifest", "model.name", "model.pretrained"}, path.stem


def test_a_preset_starts_from_its_base_key_by_key(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "base.yaml").write_text("name: base\ntrain: {epochs: 3, batch_size: 8}\n")
    (tmp_path / "mine.yaml").write_text(
        "base: bases/base.yaml\nname: mine\ndata: {manifest: m.parquet}\ntrain: {epochs: 7}\n"
    )
    c = load_config(tmp_path / "mine.yaml", ["train.seed=3"])
    assert (c.name, c.train.epochs, c.train.batch_size, c.train.seed) == ("mine", 7, 8, 3)

    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "orphan.yaml")


def test_scratch_preset():
    c = load_config(CONFIGS / "scratch.yaml")
    assert (c.model.name, c.model.image_size, c.data.image_size, c.data.cache_short_side) == (
        "tiny",
        64,
        64,
        64,
    )
    assert (c.train.num_workers, c.train.use_gpu, c.train.precision) == (2, False, "fp32")
    assert (c.train.batch_size, c.train.new_lr, c.train.clip_lr, c.train.max_steps) == (16, 1e-3, 3e-4, 300)
    assert c.train.eval_every_steps == 50 and c.tracking.experiment == "promptswitch-demo"


def test_the_demo_is_the_scratch_preset_fine_tuning_image_pretrained_weights_on_order_twins():
    demo, scratch = (flatten_config(load_config(CONFIGS / f"{name}.yaml")) for name in ("demo", "scratch"))
    changed = {key for key in demo if demo[key] != scratch[key]}
    budget = {"train.epochs", "train.max_steps", "train.eval_every_steps"}
    fine_tuning = {"model.pretrained", "train.clip_lr"}
    assert changed == {"name", "data.manifest", "reference"} | budget | fine_tuning
    assert demo["model.pretrained"].endswith("tiny-image-clip.safetensors")
    assert demo["data.manifest"].endswith("twins/manifest.parquet")
    assert float(demo["train.clip_lr"]) < float(demo["train.new_lr"])
    assert "mean-pooled" in demo["reference"]  # printed under the test table, beside chance


def test_overrides_of_each_type(tmp_path):
    c = load_config(
        CONFIGS / "scratch.yaml",
        [
            "train.batch_size=64",  # int
            "train.new_lr=1e-5",  # float from a string (YAML reads 1e-5 as one)
            "train.clip_lr=0",  # float from an int
            "train.use_gpu=true",  # bool
            "train.precision=bf16",  # str
            "model.name=ViT-B-16",
            "data.cache_short_side=256",  # at least the model's input size, which data.image_size follows
            "name=myrun",  # top level
            "train.betas=[0.9,0.98]",  # tuple[float, float]
            "train.max_steps=null",  # X | None
            "train.eval_every_steps=7",
            "tracking.tracking_uri=http://127.0.0.1:5000",
            f"storage_path={tmp_path}",
        ],
    )
    t = c.train
    assert (t.batch_size, t.new_lr, t.clip_lr, t.use_gpu, t.precision) == (64, 1e-5, 0.0, True, "bf16")
    assert isinstance(t.clip_lr, float) and t.betas == (0.9, 0.98) and isinstance(t.betas, tuple)
    assert (t.max_steps, t.eval_every_steps) == (None, 7)
    assert (c.name, c.model.name, c.model.image_size) == ("myrun", "ViT-B-16", 224)
    assert c.tracking.tracking_uri == "http://127.0.0.1:5000"  # never made a path
    assert c.storage_path == str(tmp_path)


def test_no_file_takes_defaults():
    c = load_config(None, ["data.manifest=/d/m.parquet", "model.name=tiny", "data.image_size=64"])
    assert c.train == TrainConfig() and c.data.manifest == "/d/m.parquet"


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_in_file(tmp_path):
    path = _write(tmp_path, "data: {manifest: m.parquet}\ntrain:\n  batch_sise: 8\n")
    with pytest.raises(
        ConfigError, match=r"train\.batch_sise.*allowed train keys: epochs, max_steps, batch_size"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'optimizer'.*allowed top-level keys: name, storage_path, model"):
        load_config(_write(tmp_path, "optimizer: {lr: 1}\n"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=1e-4", r"unknown key 'train\.lr'; allowed train keys: .*clip_lr, new_lr"),
        ("model.clip={}", r"unknown key 'model\.clip'; allowed model keys: name, frames_per_group"),
        ("optim.lr=1", r"unknown key 'optim\.lr'; allowed top-level keys: name, storage_path, model, data"),
        ("train.batch_size.x=1", r"unknown key 'train\.batch_size\.x'"),
        ("seed=3", r"unknown key 'seed'; allowed top-level keys"),
        ("train=3", r"train is a section; set its keys as train\.KEY=VALUE"),
        ("train.batch_size", r"'train\.batch_size' is not of the form section\.key=value"),
        ("=3", r"not of the form section\.key=value"),
        ("train.precision=fp8", r"train\.precision='fp8' is invalid; allowed: fp32, bf16, fp16"),
        ("model.name=RN50", r"model\.name='RN50'"),
        ("train.batch_size=abc", r"train\.batch_size='abc' has the wrong type; expected an integer"),
        ("train.batch_size=32.0", r"train\.batch_size=32\.0 has the wrong type; expected an integer"),
        ("train.batch_size=null", r"train\.batch_size=None has the wrong type; expected an integer"),
        ("train.new_lr=fast", r"train\.new_lr='fast' has the wrong type; expected a number"),
        ("train.use_gpu=1", r"train\.use_gpu=1 has the wrong type; expected true or false"),
        ("train.max_steps=many", r"train\.max_steps='many' has the wrong type; expected an integer or null"),
        ("train.betas=[0.9]", r"train\.betas=\[0\.9\] has the wrong type; expected a list of 2 values"),
        ("train.betas=0.9", r"train\.betas=0\.9 has the wrong type"),
        ("name=[a]", r"name=\['a'\] has the wrong type; expected a string"),
        ("train.epochs=0", r"train\.epochs=0 is invalid; allowed: an integer >= 1"),
        ("train=", r"train is a section"),
        ("data.manifest=[", r"the value is not valid YAML"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "scratch.yaml", [override])


def test_bad_values_in_file(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size='big' has the wrong type"):
        load_config(_write(tmp_path, "data: {manifest: m}\ntrain: {batch_size: big}\n"))
    with pytest.raises(ConfigError, match=r"train=5 must be a mapping"):
        load_config(_write(tmp_path, "data: {manifest: m}\ntrain: 5\n"), ["train.epochs=2"])
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: {batch_size: [\n"))
    with pytest.raises(ConfigError, match=r"data\.manifest=''"):
        load_config(None)  # a run needs a manifest


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PS_WEIGHTS", "/srv/weights")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write(
        tmp_path,
        "data: {manifest: data/m.parquet, cache_dir: ~/cache}\n"
        "model: {name: tiny, pretrained: $PS_WEIGHTS/tiny.pt}\n"
        "tracking: {tracking_uri: sqlite:///mlruns.db}\n",
    )
    c = load_config(path, ["data.image_size=64"])
    assert c.data.manifest == str(tmp_path / "data/m.parquet")
    assert c.data.cache_dir == str(tmp_path / "home/cache")
    assert c.model.pretrained == "/srv/weights/tiny.pt"
    assert c.storage_path == str(tmp_path / "runs")  # the default is resolved too
    assert c.tracking.tracking_uri == "sqlite:///mlruns.db"  # left alone
    assert load_config(path, ["storage_path=s3://bucket/runs"]).storage_path == "s3://bucket/runs"
    assert load_config(path, ["data.cache_dir=null"]).data.cache_dir is None


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_round_trips(path, tmp_path):
    c = load_config(path)
    d = config_to_dict(c)
    assert d["train"]["betas"] == list(c.train.betas) and "clip" not in d["model"]
    assert config_from_dict(d) == c
    (tmp_path / "dumped.yaml").write_text(dump_config(c))
    assert load_config(tmp_path / "dumped.yaml") == c
    partial = RunConfig(model=c.model, data=c.data)  # other sections at their defaults
    assert config_from_dict(config_to_dict(partial)) == partial


def test_flatten(tmp_path):
    c = load_config(CONFIGS / "msrvtt-9k-b32.yaml", [f"storage_path={tmp_path}"])
    flat = flatten_config(c)
    assert all(isinstance(v, str) for v in flat.values())
    assert flat["name"] == "msrvtt-9k-b32" and flat["storage_path"] == str(tmp_path)
    assert flat["train.batch_size"] == "32" and flat["train.clip_lr"] == "1e-06"
    assert flat["train.betas"] == "[0.9, 0.999]" and flat["train.use_gpu"] == "true"
    assert flat["train.max_steps"] == "null" and flat["model.name"] == "ViT-B-32-quickgelu"
    assert "model.clip" not in flat and len(flat) == sum(
        len(v) if isinstance(v, dict) else 1 for v in config_to_dict(c).values()
    )
    # every flattened parameter is a valid override giving back the same config
    assert load_config(None, [f"{k}={v}" for k, v in flat.items()]) == c


def test_cwd_is_read_at_load_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = load_config(CONFIGS / "scratch.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    second = load_config(CONFIGS / "scratch.yaml")
    assert os.path.dirname(first.storage_path) == str(tmp_path)
    assert os.path.dirname(second.storage_path) == str(tmp_path / "elsewhere")


def test_configs_the_worker_payload_and_the_sharding_import_without_torch():
    # Ray's actors unpickle these (the payload, the datasets' sharding): they must not pay for torch, MLflow
    # or the model.
    code = (
        "import sys, orchestrator.config_io, orchestrator.training.payload, orchestrator.training.sharding; "
        "print(sorted(m for m in ('torch', 'mlflow', 'open_clip') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
