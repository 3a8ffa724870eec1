"""Joining a Ray cluster, or starting a private local one that listens on loopback only."""

from __future__ import annotations

import os

import ray
import ray.data

# Ray binds to the machine's network address by default; on one machine, with this setting, GCS, raylet,
# workers and gloo's rendezvous all stay on 127.0.0.1, so a local run opens nothing to the network.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# On one machine no node is ever drained or preempted: Ray Train's preemption watcher, an actor (~115 MB) per
# training worker group that polls for node drains, would have nothing to watch.
_LOCAL_ONLY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 1024,
    dashboard: bool = True,
) -> str:
    """Join the cluster at `address` (or $RAY_ADDRESS) if given, else start a local one bound to 127.0.0.1.

    Returns what it did: "joined <address>", "local", or with `dashboard` "local, dashboard on <url>".
    """
    quiet_data_progress()
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"joined {address}"
    os.environ.update(_LOOPBACK_ENV)  # read by the GCS, raylet and workers Ray spawns next
    # This process read the variable when it imported ray; the flag it set decides the node address.
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    context = ray.init(
        _node_ip_address="127.0.0.1",
        num_cpus=num_cpus,
        object_store_memory=object_store_mb * 1024**2,  # Ray's default asks for ~30% of RAM
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env={
            "env_vars": _LOOPBACK_ENV | _LOCAL_ONLY_ENV,
            "worker_process_setup_hook": pin_cluster_address,
        },
    )
    return f"local, dashboard on http://{context.dashboard_url}" if context.dashboard_url else "local"


def quiet_data_progress() -> None:
    """Ray Data's progress bars would bury the training progress line; its logs still go to the session dir.

    A setting of the process that builds the datasets: the driver, or a sweep's trial.
    """
    ray.data.DataContext.get_current().enable_progress_bars = False


def pin_cluster_address() -> None:
    """Run in every worker of a local cluster: point Ray's own address lookups at this cluster.

    Ray Train's PlacementGroupCleaner asks the State API whether the training controller is alive; with no
    address that API searches the machine for Ray instances and fails as soon as it finds two (a test
    suite's cluster beside a job's, two users' jobs). The cleaner then dies, and a sweep trial that Tune
    stops leaves its workers' placement group reserved: the next trial's decoding waits for CPUs forever.
    """
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
