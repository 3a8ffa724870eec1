"""`promptswitch eval`'s scoring on the library's embedding path gives the plain one-process metrics."""

import pytest
from ray.train import Checkpoint

from orchestrator.training.scoring import score_checkpoint
from pipelines.dataset import prepare_data
from tests.library.test_embed import _checkpoint
from tests.orchestrator.training.reference import reference_metrics


@pytest.mark.slow
def test_scoring_a_checkpoint_gives_the_one_process_metrics(ray_local, synth, tmp_path):
    run = _checkpoint(tmp_path / "ckpt", synth)
    data = prepare_data(run.data, run.model.frames_per_group)
    scored = score_checkpoint(Checkpoint.from_directory(str(tmp_path / "ckpt")), run, data, "test")
    expected = reference_metrics(run, tmp_path / "ckpt", "test")
    assert scored.pop("videos_missing") == 0
    assert scored == pytest.approx(expected, abs=1e-9)
