"""What a multi-node cluster requires of a run, checked before any cluster work, on a real local Ray."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import cluster, storage
from orchestrator.cluster import ClusterError, ClusterShape
from orchestrator.config_io import load_config
from orchestrator.sweeps.config import load_sweep
from orchestrator.sweeps.sweep import trial_concurrency
from tests.orchestrator.training.test_job import ROOT, SCRATCH, command

# cluster.yaml's node types as `ray up` writes them to the head, resources filled in from the instances.
BOOTSTRAP = {
    "max_workers": 6,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 4},
        "cpu_worker": {"resources": {"CPU": 16}, "min_workers": 0, "max_workers": 4},
    },
}


def test_the_ceiling_counts_each_resource_at_its_most_within_the_cluster_cap():
    resources, nodes = cluster.autoscaling_ceiling(BOOTSTRAP)
    # max_workers=6: the most GPUs are 4 GPU workers; the most CPUs, 4 CPU workers and 2 GPU workers.
    assert resources == {"CPU": 4 * 16 + 2 * 8, "GPU": 4}
    assert nodes == 7


def test_a_sweep_plans_for_the_grown_cluster_not_the_present_one(ray_local, tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(BOOTSTRAP))
    shape = cluster.cluster_shape(bootstrap)
    assert len(shape.nodes) == 1 and shape.can_grow and shape.multi_node
    assert shape.ceiling["GPU"] == 4
    sweep = load_sweep(ROOT / "configs" / "sweep-demo.yaml")
    raw = yaml.safe_load((ROOT / "configs" / "sweep-demo.yaml").read_text())
    raw["base"] = str(SCRATCH)
    raw["base_overrides"] = ["train.use_gpu=true", "train.precision=bf16"]
    (tmp_path / "gpu-sweep.yaml").write_text(yaml.safe_dump(raw))
    gpu_sweep = load_sweep(tmp_path / "gpu-sweep.yaml")
    # No GPU is up yet, but four GPU workers may come: four one-GPU trials, not one.
    assert trial_concurrency(gpu_sweep, shape) == 4
    assert trial_concurrency(sweep, cluster.cluster_shape(tmp_path / "absent.yaml")) == 1  # 2 CPUs here


def test_one_machine_has_nothing_to_check(ray_local, tmp_path):
    shape = cluster.cluster_shape(tmp_path / "absent.yaml")
    assert not shape.multi_node
    run = load_config(SCRATCH, [f"storage_path={tmp_path}", "data.manifest=x.parquet"])
    cluster.check_run(run, shape, "sqlite:///mlflow.db")
    assert cluster.tracking_host(shape) == "127.0.0.1"


def test_paths_are_probed_on_every_node(ray_local, tmp_path):
    node = cluster.cluster_shape(tmp_path / "absent.yaml").nodes[0]
    two = ClusterShape([node, node], {"CPU": 2})  # the same node twice: the probe runs on each
    run = load_config(
        SCRATCH,
        [f"storage_path={tmp_path / 'runs'}", "data.manifest=x.parquet", f"data.cache_dir={tmp_path / 'c'}"],
    )
    cluster.check_run(run, two, "http://10.0.0.5:5000")  # written folders seen by the node: fine
    assert not list((tmp_path / "runs").iterdir()), "the probe's marker file was left behind"
    missing = str(tmp_path / "weights.pt")
    with pytest.raises(ClusterError, match=r"--checkpoint: .*weights\.pt is not there on node"):
        cluster.check_run(run, two, "http://10.0.0.5:5000", also_read={"--checkpoint": missing})


def test_local_disks_are_refused_where_the_autoscaler_may_add_nodes(ray_local, tmp_path):
    node = cluster.cluster_shape(tmp_path / "absent.yaml").nodes[0]
    growing = ClusterShape([node], {"CPU": 2}, can_grow=True)
    run = load_config(SCRATCH, [f"storage_path={tmp_path}", "data.manifest=x.parquet"])
    fs = cluster.filesystem_type(str(tmp_path))
    assert not cluster.is_shared_filesystem(fs)  # the test machine's disk
    own_disk = rf"storage_path: {tmp_path} is on this machine's own disk \({fs}\)"
    with pytest.raises(ClusterError, match=own_disk):
        cluster.check_run(run, growing, "http://10.0.0.5:5000")
    s3 = load_config(SCRATCH, ["storage_path=s3://bucket/runs", "data.manifest=x.parquet"])
    cluster.check_run(s3, growing, "http://10.0.0.5:5000")  # checkpoints to S3: nothing local to share


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("sqlite:////srv/mlflow.db", None),  # served from the driver's private address by the job
        ("http://10.0.0.5:5000", None),
        ("postgresql://mlflow@10.0.0.5/mlflow", None),
        ("http://127.0.0.1:5000", "loopback"),
        ("http://localhost:5000", "loopback"),
        ("http://[::1]:5000", "loopback"),
        ("file:///srv/mlruns", "driver's disk"),
        ("/srv/mlruns", "driver's disk"),
    ],
)
def test_tracking_uris_other_nodes_cannot_reach_are_named(uri, problem):
    found = cluster.tracking_problem(uri)
    assert (found is None) if problem is None else (problem in found and uri in found)


def test_filesystem_types_from_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "overlay / overlay rw 0 0\n"
        "10.0.0.9:/export /mnt/shared nfs4 rw 0 0\n"
        "s3fs /mnt/bucket fuse.s3fs rw 0 0\n"
    )
    assert cluster.filesystem_type("/mnt/shared/runs/x", str(mounts)) == "nfs4"
    assert cluster.filesystem_type("/mnt/sharedother", str(mounts)) == "overlay"
    assert cluster.filesystem_type("/mnt/bucket", str(mounts)) == "fuse.s3fs"
    assert [cluster.is_shared_filesystem(t) for t in ("nfs4", "fuse.s3fs", "ext4", "overlay")] == [
        True,
        True,
        False,
        False,
    ]


def test_storage_uris_keep_their_options(tmp_path):
    uri = "s3://bucket/runs?endpoint_override=http://127.0.0.1:9&scheme=http&region=us-east-1"
    assert storage.join(uri, "demo") == (
        "s3://bucket/runs/demo?endpoint_override=http://127.0.0.1:9&scheme=http&region=us-east-1"
    )
    fs, path = storage.location(uri)
    assert type(fs).__name__ == "S3FileSystem" and path == "bucket/runs"
    assert storage.location(str(tmp_path)) == (None, str(tmp_path))
    assert not storage.exists(storage.join(str(tmp_path), "demo"))
    (tmp_path / "demo").mkdir()
    assert storage.exists(storage.join(str(tmp_path), "demo"))


@pytest.mark.slow
def test_a_run_that_cannot_work_on_the_cluster_is_refused_before_training(synth, tmp_path):
    # The same local machine, described as the head of a cluster that may grow to six workers.
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(BOOTSTRAP))
    env = {"PROMPTSWITCH_AUTOSCALING_CONFIG": str(bootstrap), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    store = f"file://{tmp_path / 'mlruns'}"
    argv = command(synth, tmp_path, "refused", f"tracking.tracking_uri={store}")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot work on a multi-node cluster" in done.stderr
    assert f"tracking.tracking_uri={store} is a folder on the driver's disk" in done.stderr
    assert f"storage_path: {tmp_path / 'runs'} is on this machine's own disk" in done.stderr
    assert "Traceback" not in done.stderr
    # Refused before training: the run's folder holds the job's log (which names the refusal), nothing else.
    assert [p.name for p in (tmp_path / "runs" / "refused").iterdir()] == ["logs"]
    assert sys.executable  # the project's interpreter ran it


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 API on a free loopback port, with a bucket; its test credentials, not secrets."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(key, value)
    moto = Path(sys.executable).with_name("moto_server")
    host, port = endpoint.split(":")
    server = subprocess.Popen([moto, "-H", host, "-p", port], stdout=subprocess.DEVNULL)
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True
        )
        for _ in range(100):  # until the server answers
            try:
                fs.create_dir("runs-bucket")
                break
            except OSError:
                time.sleep(0.2)
        made = fs.get_file_info("runs-bucket").type == pafs.FileType.Directory
        assert made, "moto did not create the bucket"
        yield f"s3://runs-bucket/runs?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_run_in_a_bucket_is_found_for_resuming(s3_server):
    run = storage.join(s3_server, "demo")
    assert not storage.exists(run)
    fs, path = storage.location(run)
    with fs.open_output_stream(f"{path}/checkpoint_000000/model.safetensors") as f:
        f.write(b"weights")
    assert storage.exists(run)
