"""What `make cluster-test` checks on the running cluster, through Ray's state API and MLflow's REST API.

    python -m tests.cluster.report wait-nodes --address HEAD:6379 --count 3
    python -m tests.cluster.report check --address HEAD:6379 --tracking-uri http://HEAD:5000 \\
        --run-name NAME --worker-ip WORKER --decode-ip DECODE --storage s3://...
    python -m tests.cluster.report check-sweep --address HEAD:6379 --tracking-uri sqlite:///... \\
        --sweep NAME --trials 2 --worker-ip WORKER --worker-ip DECODE

`check` fails unless the MLflow run finished with every step, evaluation and test metric and its artifacts,
its checkpoints are in the storage URI, the training workers ran on worker nodes and the decoding went
first to the decode node; it prints the node ids. `check-sweep` fails unless the sweep's parent run and
each trial's run (written by the trial's rank 0 on a worker node) finished with every step, and the
trials' training workers ran at the same time, on different nodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from itertools import combinations

TRAIN_WORKER = "RayTrainWorker"
DATA_TASK = "MapBatches("  # the decoding stages of pipelines/dataset.py


def wait_nodes(address: str, count: int, timeout_s: float) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    alive: list = []
    while time.monotonic() < deadline:
        try:
            alive = list_nodes(address, filters=[("state", "=", "ALIVE")])
        except Exception as e:  # the dashboard answers a few seconds after the GCS
            print(f"waiting for the state API: {type(e).__name__}", flush=True)
        if len(alive) >= count:
            print(f"{len(alive)} nodes alive: " + ", ".join(n.node_ip for n in alive), flush=True)
            return
        time.sleep(2)
    raise SystemExit(f"only {len(alive)} of {count} nodes joined within {timeout_s:.0f} s")


def check_mlflow(tracking_uri: str, experiment: str, run_name: str, steps: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {tracking_uri}"
    runs = client.search_runs([found.experiment_id], f"tags.`mlflow.runName` = '{run_name}'")
    assert len(runs) == 1, f"expected one MLflow run named {run_name!r}, found {len(runs)}"
    run = runs[0]
    assert run.info.status == "FINISHED", run.info.status
    loss = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert loss == list(range(1, steps + 1)), f"loss logged at steps {loss}"
    assert client.get_metric_history(run.info.run_id, "val_t2v_recall_at_1"), "no validation metric"
    assert "test_t2v_recall_at_1" in run.data.metrics, "no test metric"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "final_metrics.json"} <= artifacts, artifacts
    print(
        f"MLflow run {run.info.run_id} ({run_name}) at {tracking_uri}: {run.info.status}, loss at steps "
        f"{loss}, test t2v R@1 {run.data.metrics['test_t2v_recall_at_1']:.3f}, artifacts "
        f"{', '.join(sorted(artifacts))}",
        flush=True,
    )


def check_checkpoints(storage: str, run_name: str) -> None:
    """The run's checkpoints are in the storage URI: Ray Train wrote them there from the workers."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage)
    files = fs.get_file_info(pafs.FileSelector(f"{root}/{run_name}", recursive=True))
    weights = sorted(f.path for f in files if f.path.endswith("/model.safetensors"))
    assert weights, f"no checkpoint under {storage} / {run_name}: {[f.path for f in files][:20]}"
    print(f"checkpoints in {storage.split('?')[0]}: " + ", ".join(w.split("/")[-2] for w in weights))


def check_placement(address: str, worker_ip: str, decode_ip: str) -> None:
    """Where each Ray Data task and each training worker ran, by node id; the worker node must have a
    training worker, and the node labelled for decoding must have run most of the decoding."""
    from ray.util.state import list_actors, list_jobs, list_nodes, list_tasks

    nodes = {n.node_id: n for n in list_nodes(address, detail=True)}
    tasks = [t for t in list_tasks(address, detail=True, limit=10_000) if t.name.startswith(DATA_TASK)]
    actors = [a for a in list_actors(address, detail=True, limit=10_000) if TRAIN_WORKER in a.class_name]
    print("node id                                                   address        role    Ray Data tasks"
          "  training workers")  # fmt: skip
    for node_id, node in nodes.items():
        ran = Counter(t.name for t in tasks if t.node_id == node_id)
        trainers = sum(a.node_id == node_id for a in actors)
        role = "head" if node.is_head_node else "worker"
        detail = ", ".join(f"{n} x{c}" for n, c in sorted(ran.items())) or "0"
        print(f"{node_id}  {node.node_ip:<13}  {role:<6}  {detail}  {trainers}", flush=True)
    for job in list_jobs(address, detail=True):
        info = job.driver_info
        ip = info["node_ip_address"] if isinstance(info, dict) else getattr(info, "node_ip_address", "?")
        print(f"job {job.job_id} ({job.status}): driver on {ip}, {job.entrypoint or 'python ~/train.py'}")
    assert any(n.node_ip == worker_ip for n in nodes.values()), f"no node at {worker_ip}"
    # CPU training workers may go to either worker node (on a real cluster they ask for GPUs, which only
    # the GPU nodes have); never to the head, which has no CPUs for Ray.
    workers = {i for i, n in nodes.items() if not n.is_head_node}
    assert tasks, "the state API lists no Ray Data task"
    assert actors and all(a.node_id in workers for a in actors), "a training worker ran on the head"
    decoders = {i for i, n in nodes.items() if n.node_ip == decode_ip}
    on_decode = sum(t.node_id in decoders for t in tasks)
    on_worker = (sum(t.node_id in workers for t in tasks), sum(a.node_id in workers for a in actors))
    print(
        "found with ray.util.state (list_nodes, list_tasks, list_actors; detail=True): "
        f"{len(tasks)} Ray Data tasks and {len(actors)} training workers; on the worker nodes: "
        f"{on_worker[0]} tasks and {on_worker[1]} training workers; on the decode node: {on_decode} tasks",
        flush=True,
    )
    assert on_decode > len(tasks) / 2, f"the decode node ran {on_decode} of {len(tasks)} Ray Data tasks"


def check_sweep(address: str, tracking_uri: str, sweep: str, trials: int, steps: int, ips: list[str]) -> None:
    """The sweep's runs, and its trials' training workers side by side on different worker nodes."""
    from mlflow import MlflowClient
    from ray.util.state import list_actors, list_jobs, list_nodes

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("promptswitch-demo")
    assert experiment is not None, f"no experiment at {tracking_uri}"
    parents = client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{sweep}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    parent = parents[0].info.run_id
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == trials, f"{len(children)} trial runs, expected {trials}"
    for child in children:
        loss = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert loss == list(range(1, steps + 1)), f"trial {child.info.run_name}: loss at steps {loss}"
        assert child.info.status == "FINISHED", (child.info.run_name, child.info.status)
    print(f"MLflow sweep {sweep} ({parent}): FINISHED, {trials} trial runs FINISHED with loss at 1..{steps}")

    nodes = {n.node_id: n.node_ip for n in list_nodes(address, detail=True)}
    job = max(list_jobs(address, detail=True), key=lambda j: j.start_time or 0)
    actors = [
        a
        for a in list_actors(address, detail=True, limit=10_000)
        if TRAIN_WORKER in a.class_name and a.job_id == job.job_id
    ]
    assert len(actors) == trials, f"{len(actors)} training workers in the sweep's job, expected {trials}"
    where = sorted(nodes[a.node_id] for a in actors)
    print("the trials' training workers ran on " + ", ".join(where))
    assert set(where) == set(ips), f"training workers on {where}, expected one on each of {ips}"
    spans = [(c.info.start_time, c.info.end_time) for c in children]
    for (a0, a1), (b0, b1) in combinations(spans, 2):
        assert a0 < b1 and b0 < a1, f"the trials did not overlap in time: {spans}"
    print(f"the trials' MLflow runs overlap in time: {spans}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wait = commands.add_parser("wait-nodes")
    wait.add_argument("--address", required=True)
    wait.add_argument("--count", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=180)
    check = commands.add_parser("check")
    check.add_argument("--address", required=True)
    check.add_argument("--tracking-uri", required=True)
    check.add_argument("--experiment", default="promptswitch-demo")
    check.add_argument("--run-name", required=True)
    check.add_argument("--steps", type=int, default=4)
    check.add_argument("--worker-ip", required=True)
    check.add_argument("--decode-ip", required=True)
    check.add_argument("--storage", required=True, help="the run's storage URI")
    sweep = commands.add_parser("check-sweep")
    sweep.add_argument("--address", required=True)
    sweep.add_argument("--tracking-uri", required=True)
    sweep.add_argument("--sweep", required=True)
    sweep.add_argument("--trials", type=int, required=True)
    sweep.add_argument("--steps", type=int, default=4)
    sweep.add_argument("--worker-ip", action="append", required=True, dest="worker_ips")
    args = parser.parse_args(argv)
    if args.command == "wait-nodes":
        wait_nodes(args.address, args.count, args.timeout)
        return 0
    try:
        if args.command == "check-sweep":
            check_sweep(args.address, args.tracking_uri, args.sweep, args.trials, args.steps, args.worker_ips)
            return 0
        check_mlflow(args.tracking_uri, args.experiment, args.run_name, args.steps)
        check_checkpoints(args.storage, args.run_name)
        check_placement(args.address, args.worker_ip, args.decode_ip)
    except AssertionError as e:
        print(f"cluster test: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
