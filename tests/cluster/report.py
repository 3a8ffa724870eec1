"""What `make cluster-test` checks on the running cluster, through Ray's state API and MLflow's REST API.

    python -m tests.cluster.report wait-nodes --address HEAD:6379 --count 2
    python -m tests.cluster.report check --address HEAD:6379 --tracking-uri http://HEAD:5000 \\
        --run-name NAME --worker-ip WORKER

`check` fails unless the MLflow run finished with every step, evaluation and test metric and its artifacts,
and unless the Ray Data decoding tasks and a training worker ran on the worker node; it prints the node ids.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

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


def check_placement(address: str, worker_ip: str) -> None:
    """Where each Ray Data task and each training worker ran, by node id; the worker node must have both."""
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
    workers = {i for i, n in nodes.items() if n.node_ip == worker_ip and not n.is_head_node}
    assert workers, f"no worker node at {worker_ip} in {[n.node_ip for n in nodes.values()]}"
    assert tasks, "the state API lists no Ray Data task"
    assert any(t.node_id in workers for t in tasks), "no Ray Data task ran on the worker node"
    assert any(a.node_id in workers for a in actors), "no training worker ran on the worker node"
    on_worker = (sum(t.node_id in workers for t in tasks), sum(a.node_id in workers for a in actors))
    print(
        "found with ray.util.state (list_nodes, list_tasks, list_actors; detail=True): "
        f"{len(tasks)} Ray Data tasks and {len(actors)} training workers; on the worker node "
        f"{sorted(workers)[0]}: {on_worker[0]} tasks and {on_worker[1]} training workers",
        flush=True,
    )


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
    args = parser.parse_args(argv)
    if args.command == "wait-nodes":
        wait_nodes(args.address, args.count, args.timeout)
        return 0
    try:
        check_mlflow(args.tracking_uri, args.experiment, args.run_name, args.steps)
        check_placement(args.address, args.worker_ip)
    except AssertionError as e:
        print(f"cluster test: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
