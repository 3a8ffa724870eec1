"""cluster.yaml turned into a local-provider cluster on fixed addresses: what `make cluster-test` brings up.

What decides how the cluster behaves is taken from cluster.yaml: the idle timeout, the code mount and its
rsync filters, the head's resources (no CPUs: no task runs on the head) and the `ray start` and MLflow
commands. What cannot be the same on one machine is swapped: the provider (addresses instead of EC2), the
ssh user and key, the setup (the project's existing virtualenv instead of a fresh install), the MLflow
store (sqlite and a folder instead of PostgreSQL and S3) and its address (the head's, not all interfaces).

    python -m tests.cluster.local_variant --head-ip 10.213.77.1 --worker-ip 10.213.77.2 \\
        --worker-ip 10.213.77.3 --decode-ip 10.213.77.3 --user U --key KEY --venv .venv --workdir DIR \\
        --out local.yaml
"""

from __future__ import annotations

import argparse
import copy
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
MLFLOW_PORT = 5000


def load_cluster(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def local_variant(
    cloud: dict,
    *,
    head_ip: str,
    worker_ips: list[str],
    ssh_user: str,
    ssh_key: str,
    venv: Path,
    workdir: Path,
    worker_cpus: int = 2,
    object_store_mb: int = 512,
    decode_ips: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict:
    """The local-provider config; `workdir` (on the shared filesystem) holds Ray's and MLflow's files.

    The local provider has one node type for all its workers: the workers at `decode_ips` get the labels
    of cluster.yaml's CPU decoding type when they start, the others none (they stand for GPU workers).
    `env` adds variables to every node's environment file (the test's S3 credentials, say).
    """
    head_type = cloud["available_node_types"][cloud["head_node_type"]]
    head_cpus = int(head_type["resources"]["CPU"])
    store = f"--object-store-memory={object_store_mb * 1024**2}"
    kept = {
        key: copy.deepcopy(cloud[key])
        for key in ("idle_timeout_minutes", "upscaling_speed", "rsync_exclude", "rsync_filter")
    }
    return {
        "cluster_name": f"{cloud['cluster_name']}-local",
        **kept,
        "provider": {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)},
        "auth": {"ssh_user": ssh_user, "ssh_private_key": ssh_key},
        "min_workers": len(worker_ips),
        "max_workers": len(worker_ips),
        # The same remote paths; relative local paths are the repository's.
        "file_mounts": {
            remote: str(ROOT / local) if local.startswith("./") else local
            for remote, local in cloud["file_mounts"].items()
        },
        "initialization_commands": [],
        "setup_commands": _setup_commands(cloud, head_ip, venv, workdir, env or {}),
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            _local_mlflow(c, head_ip, workdir)
            if "mlflow server" in c
            else _local_start(c, f"--node-ip-address={head_ip} --num-cpus={head_cpus} {store}")
            for c in cloud["head_start_ray_commands"]
        ],
        "worker_start_ray_commands": [
            # Its own temporary folder (named by the last byte of its address), as on a machine of its own.
            _local_start(
                c,
                f"--num-cpus={worker_cpus} {store} --temp-dir={workdir}/w$({_OWN_IP} | cut -d. -f4)"
                + _decode_labels(cloud, decode_ips),
            )
            for c in cloud["worker_start_ray_commands"]
        ],
    }


_OWN_IP = "hostname -I | awk '{print $1}'"  # a node's address, in its own network namespace


def _decode_labels(cloud: dict, decode_ips: tuple[str, ...]) -> str:
    """A `--labels` flag that only the decode workers' shells expand to cluster.yaml's decode labels."""
    if not decode_ips:
        return ""
    labels = ",".join(f"{k}={v}" for k, v in cloud["available_node_types"]["cpu_worker"]["labels"].items())
    cases = "|".join(decode_ips)
    return f' $(case "$({_OWN_IP})" in {cases}) echo --labels={labels};; esac)'


def _setup_commands(cloud: dict, head_ip: str, venv: Path, workdir: Path, extra: dict) -> list[str]:
    """The environment file of cluster.yaml, with local values; hooked into ~/.bashrc by cluster.yaml's line.

    One home serves both nodes here, so the head's variables are in every node's file: the worker's
    `ray start` names its address explicitly and ignores them.
    """
    env = {
        "PATH": f"{venv.absolute()}/bin:$PATH",
        "RAY_AUTH_MODE": "token",
        "RAY_TMPDIR": str(workdir / "tmp"),  # not /tmp/ray, which other users' clusters may hold
        "RAY_ADDRESS": f"{head_ip}:6379",
        "MLFLOW_TRACKING_URI": f"http://{head_ip}:{MLFLOW_PORT}",
    } | extra
    lines = " ".join(shlex.quote(f'export {k}="{v}"') for k, v in env.items())
    hook = [c for c in cloud["setup_commands"] if "~/.bashrc" in c]
    if len(hook) != 1:
        raise ValueError("cluster.yaml's setup_commands must hook ~/.promptswitch-env into ~/.bashrc once")
    return [f"mkdir -p {workdir / 'tmp'}", f"printf '%s\\n' {lines} > ~/.promptswitch-env", *hook]


def _local_start(command: str, flags: str) -> str:
    return f"{command} {flags}" if "ray start" in command else command


def _local_mlflow(command: str, head_ip: str, workdir: Path) -> str:
    """cluster.yaml's MLflow command with the store, artifacts and address of this machine."""
    swaps = {
        "postgresql:///mlflow": f"sqlite:///{workdir}/mlflow.db",
        '"$PROMPTSWITCH_BUCKET/mlflow"': str(workdir / "mlartifacts"),
        "--host 0.0.0.0": f"--host {head_ip}",
        f"127.0.0.1:{MLFLOW_PORT}": f"{head_ip}:{MLFLOW_PORT}",
        "--workers 2": "--workers 1",
        "~/mlflow-server.log": str(workdir / "mlflow-server.log"),
    }
    for old, new in swaps.items():
        if old not in command:
            raise ValueError(f"cluster.yaml's MLflow command no longer has {old!r}: update {__file__}")
        command = command.replace(old, new)
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-ip", required=True)
    parser.add_argument("--worker-ip", action="append", default=[], dest="worker_ips")
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", required=True, help="the ssh private key of --user")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--worker-cpus", type=int, default=2)
    parser.add_argument("--decode-ip", action="append", default=[], dest="decode_ips")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = local_variant(
        load_cluster(),
        head_ip=args.head_ip,
        worker_ips=args.worker_ips,
        ssh_user=args.user,
        ssh_key=args.key,
        venv=args.venv,
        workdir=args.workdir,
        worker_cpus=args.worker_cpus,
        decode_ips=tuple(args.decode_ips),
        env=dict(e.split("=", 1) for e in args.env),
    )
    args.out.write_text(yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    main()
