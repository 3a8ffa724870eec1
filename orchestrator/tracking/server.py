"""An MLflow tracking server in front of a sqlite store, for concurrent writers and other nodes.

SQLite answers a second writer with "database is locked", and a sweep has one writer per running trial; a
file on the driver's disk is out of reach of other nodes. The server is the store's only writer. It
listens on 127.0.0.1, or on a cluster on the driver's private address (`orchestrator.cluster`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SQLITE_PREFIX = "sqlite:///"


@contextmanager
def tracking_server(
    uri: str, *, host: str = "127.0.0.1", log_dir: Path | None = None, timeout_s: float = 120.0
) -> Iterator[str]:
    """Yield a tracking URI that many processes, on any node that reaches `host`, may write to at once.

    Any URI but a sqlite file is yielded as it is (a server already, or a database made for it). A sqlite
    file gets `mlflow server` on a free port of `host` until the block ends. On loopback, artifacts still go
    straight to the `mlartifacts` folder beside the database, as without the server; on another address
    the server proxies them, since other nodes cannot write that folder.
    """
    if not uri.startswith(_SQLITE_PREFIX):
        yield uri
        return
    db = Path(uri[len(_SQLITE_PREFIX) :].split("?", 1)[0]).resolve()
    port = _free_port(host)
    artifacts = str(db.parent / "mlartifacts")
    if host == "127.0.0.1":
        serving = ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    else:
        serving = ["--artifacts-destination", artifacts, "--serve-artifacts"]
    log_path = (log_dir or db.parent) / "mlflow-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        *serving,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_server_env()
        )
    try:
        url = f"http://{host}:{port}"
        _wait_ready(url, server, log_path, timeout_s)
        yield url
    finally:
        _stop(server)


def _server_env() -> dict[str, str]:
    # MLflow 3 servers start a job runner and seven task consumers (about 240 MB each) for features this
    # project does not use; without them the server is two processes.
    return os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the MLflow tracking server exited ({server.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    _stop(server)
    raise TimeoutError(f"the MLflow tracking server at {url} was not up in {timeout_s:.0f} s; see {log_path}")


def _stop(server: subprocess.Popen) -> None:
    """The server and its workers (one process group) get SIGTERM, then SIGKILL after 10 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
