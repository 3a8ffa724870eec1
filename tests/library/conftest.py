import pytest

from pipelines.synth import write_synthetic_dataset


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """24 short synthetic mp4s (6 of them the test split) and their manifest."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), videos=24, seed=11, frames=24, size=64)
