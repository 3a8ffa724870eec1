"""cluster.yaml and its local variant against Ray's own schema, and the rules the cluster keeps (fast)."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.cluster.local_variant import CLUSTER_YAML, ROOT, load_cluster, local_variant

WORLD = ("0.0.0.0/0", "::/0")


@pytest.fixture(scope="module")
def cloud():
    return load_cluster()


@pytest.fixture(scope="module")
def local(cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("ct")
    return local_variant(
        cloud,
        head_ip="10.213.77.1",
        worker_ips=["10.213.77.2"],
        ssh_user="psray",
        ssh_key="/home/psray/.ssh/id_ed25519",
        venv=ROOT / ".venv",
        workdir=work,
    )


def _commands(config):
    keys = [k for k in config if k.endswith("_commands")]
    return [c for k in keys for c in config[k]]


def test_cluster_yaml_is_valid_for_rays_launcher(cloud):
    prepared = prepare_config(cloud)  # what `ray up` does: Ray's defaults filled in, then the schema
    validate_config(prepared)
    assert cloud["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker", "gpu_multi_worker", "cpu_worker"}


def test_the_local_variant_is_valid_for_rays_launcher(local):
    validate_config(prepare_config(local))
    assert local["provider"] == {"type": "local", "head_ip": "10.213.77.1", "worker_ips": ["10.213.77.2"]}
    yaml.safe_load(yaml.safe_dump(local))  # what the cluster test writes reads back


def test_node_types_have_autoscaling_bounds_and_an_idle_timeout(cloud):
    types = cloud["available_node_types"]
    assert 0 < cloud["idle_timeout_minutes"] <= 60
    assert types[cloud["head_node_type"]]["resources"] == {"CPU": 0}, "no Ray task may run on the head"
    workers = {k: v for k, v in types.items() if k != cloud["head_node_type"]}
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(n["max_workers"] for n in workers.values()) <= cloud["max_workers"]
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance"


def test_no_port_is_open_to_the_world(cloud):
    group = cloud["provider"]["security_group"]
    assert group["GroupName"], "a named, pre-created group: Ray's own would open SSH to 0.0.0.0/0"
    for rule in group.get("IpPermissions", []):
        assert not {r["CidrIp"] for r in rule.get("IpRanges", [])} & set(WORLD), rule
        assert not {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])} & set(WORLD), rule
    (head_start,) = [c for c in cloud["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (ssh)
    assert "--ray-client-server-port" not in head_start


def test_no_secret_is_written_in_the_configuration():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key"
    assert not re.search(r"(?i)(password|secret_access_key|passwd)\s*[:=]", text)
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY", text)
    for uri in re.findall(r"\b(?:postgres(?:ql)?|mysql)(?:\+\w+)?://\S*", text):
        assert "@" not in uri and ":" not in uri.split("://", 1)[1], f"credentials in {uri}"


def test_setup_installs_the_projects_pinned_stack_from_the_mounted_code(cloud):
    pins = {
        d.split("==")[0]: d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith(("torch==", "torchvision=="))
    }
    setup = cloud["setup_commands"]
    torch_line = next(i for i, c in enumerate(setup) if "torch==" in c)
    assert pins["torch"] in setup[torch_line] and pins["torchvision"] in setup[torch_line]
    project_line = next(i for i, c in enumerate(setup) if "pip install" in c and "~/promptswitch" in c)
    assert torch_line < project_line, "torch and torchvision before the project, as the Makefile does"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"], "train.py", "configs"]
    needed += [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    mounts = cloud["file_mounts"]
    for path in needed:
        assert mounts[f"~/promptswitch/{path}"] == f"./{path}", path
        assert (ROOT / path).exists(), path
    assert not [local for local in mounts.values() if local in (".", "./")], "ray up would hash .venv"


def test_the_local_variant_keeps_the_clusters_behaviour_and_binds_to_its_addresses(cloud, local):
    assert local["idle_timeout_minutes"] == cloud["idle_timeout_minutes"]
    assert set(local["file_mounts"]) == set(cloud["file_mounts"])
    assert local["file_mounts"]["~/promptswitch/model"] == str(ROOT / "model")
    commands = _commands(local)
    assert not [c for c in commands if re.search(r"\b(sudo|apt-get|pip install)\b", c)]
    (head_start,) = [c for c in local["head_start_ray_commands"] if "ray start --head" in c]
    assert head_start.startswith(next(c for c in cloud["head_start_ray_commands"] if "ray start --head" in c))
    assert "--node-ip-address=10.213.77.1" in head_start and "--num-cpus=0" in head_start
    (mlflow,) = [c for c in commands if "mlflow server" in c]
    assert "--host 10.213.77.1" in mlflow and "0.0.0.0" not in mlflow and "sqlite:///" in mlflow


def test_the_readme_walks_the_cluster_workflow():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    steps = ["ray up cluster.yaml", "ray submit cluster.yaml train.py --", "ray dashboard cluster.yaml"]
    steps += ["--sweep", "ray down cluster.yaml", "make cluster-test"]
    for step in steps:
        assert step in section, step
    assert Path(ROOT / "docs" / "cluster.md").is_file()


def test_decode_nodes_carry_the_label_that_decoding_prefers(cloud):
    from pipelines.decode import DECODE_NODE_LABEL

    assert cloud["available_node_types"]["cpu_worker"]["labels"] == DECODE_NODE_LABEL
    local = local_variant(
        cloud,
        head_ip="10.213.77.1",
        worker_ips=["10.213.77.2", "10.213.77.3"],
        ssh_user="psray",
        ssh_key="/home/psray/.ssh/id_ed25519",
        venv=ROOT / ".venv",
        workdir=ROOT,
        decode_ips=("10.213.77.3",),
    )
    (start,) = [c for c in local["worker_start_ray_commands"] if "ray start" in c]
    assert "10.213.77.3) echo --labels=promptswitch/role=decode" in start
