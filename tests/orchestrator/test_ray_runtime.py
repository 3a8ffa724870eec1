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
