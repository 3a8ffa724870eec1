import os

import pytest

# Nothing in the suite may reach a model hub: fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """24 short synthetic mp4s (6 of them the test split, 3 val) and their manifest."""
    from pipelines.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), videos=24, seed=11, frames=24, size=64)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run config, checkpoint folder): a demo-sized model, trained.

    The tiny model is trained in one process (the quickstart's loop, ~1 min) on the synthetic world less the
    videos of a written dataset's val and test splits, and saved as a training job saves a checkpoint; the
    run config names that dataset (72 videos, 18 of them the unseen test split).
    """
    from model import ModelConfig
    from orchestrator.config import RunConfig, TrainConfig
    from orchestrator.config_io import dump_config
    from orchestrator.quickstart import train_tiny
    from orchestrator.training import checkpoint
    from orchestrator.training.step import build_optimisation
    from pipelines.config import DataConfig
    from pipelines.manifest import read_manifest
    from pipelines.synth import write_synthetic_dataset
    from pipelines.synthetic import all_specs

    folder = tmp_path_factory.mktemp("trained")
    manifest = write_synthetic_dataset(folder / "data", videos=72, seed=7, frames=24, size=64)
    table = read_manifest(manifest)
    splits = zip(table["caption"].to_pylist(), table["split"].to_pylist(), strict=True)
    held_out = {caption for caption, split in splits if split != "train"}  # paraphrases never match a spec
    model = train_tiny([s for s in all_specs() if s.caption not in held_out], steps=150, log=lambda _: None)
    run = RunConfig(
        name="trained",
        model=ModelConfig(name="tiny", frames_per_group=6),
        data=DataConfig(manifest=str(manifest), image_size=64, cache_short_side=64),
        train=TrainConfig(batch_size=16),
    )
    ckpt = folder / "ckpt"
    optimisation = build_optimisation(model, run.train, 150)
    checkpoint.save(ckpt, model, optimisation, checkpoint.TrainState(step=150), dump_config(run))
    return run, ckpt


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster on loopback for the whole session, started only by tests that ask."""
    import ray
    from ray.data import DataContext

    from orchestrator.ray_runtime import connect

    connect(num_cpus=2, object_store_mb=512, dashboard=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
