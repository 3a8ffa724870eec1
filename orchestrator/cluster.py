"""What a run needs from a multi-node cluster, checked before any cluster work.

On one machine every path the driver sees, every worker sees, and a sqlite store or a server on loopback is
reachable by all. On a cluster the workers run on other machines: each path they read or write (weights,
manifest, videos, cache, checkpoints) must be the same file on every node (a shared mount such as NFS or
EFS), or for checkpoints a URI that pyarrow reads (`s3://`, `gs://`); and MLflow must be a server that
every node reaches on the cluster's private network. A run that breaks a rule is refused here, naming the
key and what to use, instead of failing minutes later inside a worker.

A cluster that `ray up` started keeps its autoscaler's configuration on the head
(`~/ray_bootstrap_config.yaml`, resources filled in from the instance types): it says how large the cluster
may grow, which decides how many sweep trials can run side by side, and that nodes not yet started will need
the same shared paths.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from model.config import ConfigError
from orchestrator import storage
from orchestrator.config import RunConfig

AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the autoscaler's config
ENV_AUTOSCALING_CONFIG = "PROMPTSWITCH_AUTOSCALING_CONFIG"
# File systems that other machines see the same: network and cluster file systems, and FUSE mounts of
# object stores (s3fs, gcsfuse, mountpoint-s3). A path on anything else is one machine's own disk.
SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "beegfs", "gpfs", "9p")
VIDEOS_PROBED = 8  # a sample of the manifest's videos, spread over it: a missing mount shows on any
LOOPBACK_HOSTS = ("localhost", "ip6-localhost")


class ClusterError(ConfigError):
    """The run cannot work on this cluster; the message names the keys and what to use instead."""


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    resources: dict[str, float]


@dataclass(frozen=True)
class ClusterShape:
    nodes: list[Node]  # alive now
    # Resources once the autoscaler has started every node it may (the present ones where it may not).
    ceiling: dict[str, float] = field(default_factory=dict)
    can_grow: bool = False  # the autoscaler may add nodes that are not here yet

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1 or self.can_grow


def cluster_shape(autoscaling_config: str | os.PathLike | None = None) -> ClusterShape:
    """The connected cluster's alive nodes and, from the autoscaler's configuration, how far it may grow.

    The configuration is `ray up`'s file on the head, or the one $PROMPTSWITCH_AUTOSCALING_CONFIG names
    (a cluster that another tool scales, such as KubeRay, can describe its limits in the same format).
    """
    autoscaling_config = autoscaling_config or os.environ.get(ENV_AUTOSCALING_CONFIG, AUTOSCALING_CONFIG)
    nodes = [
        Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"])) for n in ray.nodes() if n["Alive"]
    ]
    present = _sum(n.resources for n in nodes)
    path = Path(autoscaling_config).expanduser()
    if not path.is_file():
        return ClusterShape(nodes, present, False)
    maximum, max_nodes = autoscaling_ceiling(yaml.safe_load(path.read_text()))
    ceiling = {k: max(present.get(k, 0.0), maximum.get(k, 0.0)) for k in present.keys() | maximum.keys()}
    return ClusterShape(nodes, ceiling, max_nodes > len(nodes))


def autoscaling_ceiling(config: dict) -> tuple[dict[str, float], int]:
    """(resources, nodes) at most in a cluster that an autoscaler configuration allows. Each resource
    counts the node types richest in it first, up to the cluster's max_workers: the most GPUs it can
    have, the most CPUs, each on its own. A node type whose resources are not written (a provider that
    cannot detect them) counts as none."""
    types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    workers = {name: t for name, t in types.items() if name != head}
    cap = config.get("max_workers", math.inf)
    total = dict(types.get(head, {}).get("resources", {}))
    for key in {k for t in workers.values() for k in t.get("resources", {})}:
        budget = cap
        for node_type in sorted(workers.values(), key=lambda t: -t.get("resources", {}).get(key, 0)):
            count = min(node_type.get("max_workers", 0), budget)
            budget -= count
            total[key] = total.get(key, 0.0) + count * node_type.get("resources", {}).get(key, 0)
    return total, 1 + min(sum(t.get("max_workers", 0) for t in workers.values()), cap)


def check_run(
    run: RunConfig, shape: ClusterShape, tracking_uri: str, also_read: dict[str, str] | None = None
) -> None:
    """Refuse a run that cannot work on this cluster; on one machine there is nothing to check.

    The manifest is read by the driver alone; the videos it names, the weights, the cache and the
    checkpoints (and `also_read`, say a checkpoint to score) by workers anywhere.
    """
    gpus = shape.ceiling.get("GPU", 0)
    if run.train.use_gpu and gpus < run.train.num_workers:
        raise ClusterError(
            f"train.use_gpu=true asks for {run.train.num_workers} GPU worker(s); this cluster has "
            f"{gpus:g} GPU(s)"
            + (" even at its largest" if shape.can_grow else "")
            + ": set train.use_gpu=false, fewer train.num_workers, or add GPU nodes"
        )
    if not shape.multi_node:
        return
    problems = [p for p in (tracking_problem(tracking_uri),) if p]
    written = {"storage_path": run.storage_path} if not storage.is_uri(run.storage_path) else {}
    if run.data.cache_dir:
        written["data.cache_dir"] = run.data.cache_dir
    read = dict(also_read or {})
    if run.model.pretrained:
        read["model.pretrained"] = run.model.pretrained
    if Path(run.data.manifest).is_file():
        read |= {f"a video of data.manifest ({p})": p for p in _sample_videos(run.data.manifest)}
    problems += _unshared(read, written, shape)
    if problems:
        raise ClusterError(
            "this run cannot work on a multi-node cluster:\n  - "
            + "\n  - ".join(problems)
            + "\nEvery node must reach what the workers read and write: a shared mount (the same path on "
            "every node), or for storage_path a URI such as s3://bucket/runs (see docs/cluster.md)."
        )


def tracking_problem(uri: str) -> str | None:
    """Why other nodes could not log to `uri`, or None. A sqlite store is fine: the job serves it."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file" or (scheme == "" and not uri.startswith("sqlite:")):
        return (
            f"tracking.tracking_uri={uri} is a folder on the driver's disk that other nodes cannot write: "
            "use the cluster's MLflow server (http://<head private address>:5000) or leave it unset"
        )
    if scheme in ("http", "https"):
        host = urllib.parse.urlparse(uri).hostname or ""
        if host in LOOPBACK_HOSTS or _is_loopback(host):
            return (
                f"tracking.tracking_uri={uri} is this machine's loopback, which other nodes cannot reach: "
                "use the server's private address (http://10.0.0.5:5000, say)"
            )
    return None


def tracking_host(shape: ClusterShape) -> str:
    """The address a tracking server that this job starts listens on: loopback on one machine; on a
    cluster the driver's private address, which every node reaches and the internet does not."""
    if not shape.multi_node:
        return "127.0.0.1"
    ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(ip).is_private:
        raise ClusterError(
            f"the driver's address {ip} is public: a tracking server there would be open to the world. "
            "Set tracking.tracking_uri to a server on the cluster's private network"
        )
    return ip


def trial_slots(shape: ClusterShape, per_trial: dict[str, float]) -> int:
    """How many trials needing `per_trial` fit side by side once the cluster has grown to its ceiling."""
    fits = [math.floor(shape.ceiling.get(k, 0.0) / v) for k, v in per_trial.items() if v > 0]
    return max(1, min(fits, default=1))


def _unshared(read: dict[str, str], written: dict[str, str], shape: ClusterShape) -> list[str]:
    """Problems with paths that some node cannot reach: probed on every alive node; for nodes the
    autoscaler may still add, judged by the file system they live on."""
    problems = []
    markers = {}
    for key, folder in written.items():
        Path(folder).mkdir(parents=True, exist_ok=True)
        marker = Path(folder) / f".promptswitch-shared-{secrets.token_hex(8)}"
        marker.write_text(token := secrets.token_hex(16))
        markers[key] = (str(marker), token)
    try:
        probes = [
            _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
            .remote(read, markers)
            for node in shape.nodes
        ]
        for node, missing in zip(shape.nodes, ray.get(probes), strict=True):
            problems += [f"{key}: {path} is not there on node {node.ip}" for key, path in missing]
    finally:
        for marker, _ in markers.values():
            Path(marker).unlink(missing_ok=True)
    if shape.can_grow:
        for key, path in (read | written).items():
            if not Path(path).exists():
                continue
            fs = filesystem_type(path)
            if not is_shared_filesystem(fs):
                problems.append(
                    f"{key}: {path} is on this machine's own disk ({fs}); nodes that the autoscaler adds "
                    "will not see it"
                )
    return sorted(set(problems))


@ray.remote(num_cpus=0)
def _probe(read: dict[str, str], markers: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    """(key, path) of what this node cannot see: a file to read, or the driver's marker in a folder."""
    missing = [(key, path) for key, path in read.items() if not os.path.exists(path)]
    for key, (marker, token) in markers.items():
        try:
            seen = Path(marker).read_text() == token
        except OSError:
            seen = False
        if not seen:
            missing.append((key, str(Path(marker).parent)))
    return missing


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str:
    """The type of the file system `path` lives on, from the longest mount point above it."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    for line in Path(mounts).read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, parts[2]
    return fstype


def is_shared_filesystem(fstype: str) -> bool:
    return fstype in SHARED_FILESYSTEMS or fstype.startswith("fuse")


def _sample_videos(manifest: str) -> list[str]:
    paths = sorted(set(pq.read_table(manifest, columns=["video_path"]).column(0).to_pylist()))
    step = max(1, len(paths) // VIDEOS_PROBED)
    return paths[::step][:VIDEOS_PROBED]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sum(resources) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in resources:
        for key, value in r.items():
            total[key] = total.get(key, 0.0) + value
    return total
