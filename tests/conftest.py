import os

import pytest

# Nothing in the suite may reach a model hub: fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
