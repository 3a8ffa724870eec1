import ipaddress

import psutil


def _is_ray_process(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return proc.name() in ("gcs_server", "raylet") or "ray::" in cmdline or "/ray/" in cmdline


def test_a_local_cluster_listens_on_loopback_only(ray_local):
    @ray_local.remote
    def ping():
        return 1

    assert ray_local.get(ping.remote()) == 1  # workers are up too
    listening = []
    for proc in psutil.process_iter():
        if not _is_ray_process(proc):
            continue
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening += [
            (proc.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN
        ]
    assert listening, "found no listening Ray sockets to check"
    exposed = [s for s in listening if not ipaddress.ip_address(s[1].removeprefix("::ffff:")).is_loopback]
    assert not exposed, exposed


def test_workers_know_their_own_cluster(ray_local):
    """Ray's State API inside workers must not search the machine for clusters (see pin_cluster_address)."""
    import os

    @ray_local.remote
    def address() -> tuple[str | None, str]:
        return os.environ.get("RAY_ADDRESS"), ray_local.get_runtime_context().gcs_address

    pinned, own = ray_local.get(address.remote())
    assert pinned == own


def test_a_local_cluster_runs_no_preemption_watcher(ray_local):
    """Ray Train's controller reads the switch in its own process: a worker of the local cluster."""
    import os

    @ray_local.remote
    def switch() -> str | None:
        return os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")

    assert ray_local.get(switch.remote()) == "0"
