"""Ray Tune sweeps: each trial a real training run, early-stopped by ASHA, all logged to MLflow.

A trial is a Tune function trainable that builds and fits the training job's TorchTrainer and passes its
validation reports on to Tune (`TuneReportCallback`: `Tuner(TorchTrainer)` is refused by this Ray). The data
are prepared once, by the driver, and shared by every trial through the object store.

MLflow: the sweep is a parent run; each trial is a nested child run with its parameters and metric history,
written by the trial's rank 0. Several processes then write at once, which a sqlite store answers with
"database is locked", so a sqlite store is put behind a tracking server for the sweep (on 127.0.0.1, or
on a cluster on the driver's private address, which the trials' nodes reach).

The same name again resumes: Tune restores the search and its unfinished trials, and each unfinished trial
resumes its TorchTrainer from its last checkpoint and its MLflow run.
"""

from __future__ import annotations

import json
import math
import re
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from orchestrator import storage
from orchestrator.cluster import ClusterShape, check_run, cluster_shape, tracking_host, trial_slots
from orchestrator.config import SELECTION_METRIC as METRIC
from orchestrator.config_io import dump_config
from orchestrator.ray_runtime import quiet_data_progress
from orchestrator.sweeps.config import SweepConfig
from orchestrator.tracking.plots import log_training_plots, new_figure
from orchestrator.tracking.server import tracking_server
from orchestrator.tracking.tracker import Tracker, find_run_by_name, resolve_tracking_uri
from orchestrator.training.job import make_trainer, open_tracking_run, total_steps
from pipelines.dataset import PreparedData, prepare_data

DECODE_CPUS = 1  # kept free per trial for its Ray Data decoding tasks, beside its training workers
# The trial's own process only waits for its TorchTrainer, whose workers ask for their own resources; Ray
# needs a non-zero request, and a whole CPU here would be one that decoding could not use.
TRIAL_CPUS = 0.01
STOPPED_EARLY_TAG = "promptswitch.stopped_early"
_TRIAL_DIR = re.compile(r"^_trial_([0-9a-f]+_\d+)_")  # Tune's folder of a trial: <trainable>_<trial id>_...


class SweepInterrupted(Exception):
    pass


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    params: dict
    status: str  # FINISHED, STOPPED (early, by ASHA) or FAILED
    best: float | None  # the trial's best validation t2v R@1
    evaluations: int
    error: str = ""


def run_sweep(
    sweep: SweepConfig, project_dir: Path | None = None, verbose: bool = False
) -> list[TrialOutcome]:
    """Run (or resume) `sweep`; returns its trials, best first, and prints the leaderboard.

    The console shows each trial's progress and validation lines (under the trial's name) and the
    leaderboard; `verbose` adds Tune's trial tables.
    """
    base = sweep.base()
    project_dir = project_dir or Path.cwd()
    store = resolve_tracking_uri(base.tracking.tracking_uri, project_dir)
    shape = cluster_shape()
    check_run(base, shape, store)  # before any cluster work
    data = prepare_data(base.data, base.model.frames_per_group)
    with tracking_server(store, host=tracking_host(shape), log_dir=project_dir) as uri:
        parent_id = find_run_by_name(uri, base.tracking.experiment, sweep.name)
        parent = Tracker.start(
            uri, base.tracking.experiment, sweep.name, parent_id, params=_sweep_params(sweep)
        )
        print(
            f"MLflow sweep run {parent.run_id} ({'resumed' if parent_id else 'new'}) at {store}", flush=True
        )
        try:
            results, interrupted = _fit(_tuner(sweep, data, uri, parent.run_id, shape, verbose))
            if interrupted:
                raise SweepInterrupted(f"sweep {sweep.name!r} interrupted; the same command resumes it")
            outcomes = _outcomes(sweep, results, data, uri)
            _log_summary(sweep, parent, outcomes)
        except BaseException as e:
            parent.finish("KILLED" if isinstance(e, (KeyboardInterrupt, SweepInterrupted)) else "FAILED")
            raise
        parent.finish("FINISHED")
    _print_leaderboard(sweep, outcomes)
    return outcomes


def _fit(tuner: tune.Tuner):
    """(results, interrupted). Tune catches the first Ctrl-C, saves the sweep, stops its trials and returns
    as if done; it does put back the SIGINT handler it found, which is how the interrupt shows here."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False  # no signals there, for Tune or for us
    previous = signal.getsignal(signal.SIGINT)

    def marker(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, marker)
    try:
        results = tuner.fit()
        return results, signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def trial_concurrency(sweep: SweepConfig, shape: ClusterShape) -> int:
    """How many trials run at once: the configured number, else as many as the cluster holds once it has
    grown as far as its autoscaler may (trials beyond what is up now wait for the nodes they ask for)."""
    if sweep.max_concurrent:
        return sweep.max_concurrent
    train = sweep.base_trial().train
    per_trial = {"CPU": TRIAL_CPUS + train.num_workers * train.cpus_per_worker + DECODE_CPUS}
    if train.use_gpu:
        per_trial["GPU"] = train.num_workers
    return trial_slots(shape, per_trial)


def _trial(params: dict, *, sweep: SweepConfig, data: PreparedData, uri: str, parent_run_id: str) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    quiet_data_progress()  # this trial's process builds its datasets: no progress bars from it either
    name = f"{sweep.name}-{tune.get_context().get_trial_id()}"
    run = sweep.trial_config(params, name, trials_folder(sweep))
    tracker = open_tracking_run(run, data, uri, parent_run_id=parent_run_id)
    # Tune usually ends this process right after the last report: the driver closes the run (`_outcomes`).
    make_trainer(run, data, tracker, callbacks=[TuneReportCallback()], label=name).fit()


def _tuner(
    sweep: SweepConfig, data: PreparedData, uri: str, parent_run_id: str, shape: ClusterShape, verbose: bool
) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_parameters(_trial, sweep=sweep, data=data, uri=uri, parent_run_id=parent_run_id)
    trainable = tune.with_resources(trainable, {"cpu": TRIAL_CPUS})
    filesystem, root = storage.location(sweep.base().storage_path)
    path = f"{root}/{sweep.name}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        print(f"resuming the sweep at {path}", flush=True)
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=filesystem
        )
    trial = sweep.base_trial()
    # ASHA's last rung: the evaluations of a whole trial (of the base trial; batch sizes may vary).
    evaluations = planned_evaluations(trial, data)
    concurrency = trial_concurrency(sweep, shape)
    search_alg, space = _search(sweep, concurrency)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=search_alg,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=max(evaluations, sweep.grace_period),
                grace_period=sweep.grace_period,
                reduction_factor=sweep.reduction_factor,
            ),
            num_samples=sweep.num_samples,
            max_concurrent_trials=concurrency if sweep.algorithm == "tpe" else None,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=root, storage_filesystem=filesystem, verbose=1 if verbose else 0
        ),
    )


def _search(sweep: SweepConfig, concurrency: int):
    """(search algorithm, param_space) for the configured algorithm.

    Tune applies `max_concurrent_trials` to a Searcher (Optuna) only; a BasicVariantGenerator (random and
    grid) silently ignores it and must be given the limit itself.
    """
    if sweep.algorithm == "grid":
        space = {p.key: tune.grid_search(list(p.values)) for p in sweep.space}
        return _variants(sweep, concurrency), space
    domains = {
        "choice": lambda v: tune.choice(list(v)),
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
    }
    space = {p.key: domains[p.distribution](p.values) for p in sweep.space}
    if sweep.algorithm == "random":
        return _variants(sweep, concurrency), space
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.seed)), space


def _variants(sweep: SweepConfig, concurrency: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency)


def trials_folder(sweep: SweepConfig) -> str:
    return storage.join(sweep.base().storage_path, f"{sweep.name}-trials")


def _outcomes(sweep: SweepConfig, results, data: PreparedData, uri: str) -> list[TrialOutcome]:
    """Each trial's outcome, best first, with its MLflow run closed to match and its plots logged.

    Tune stops a trial as soon as it reports its last evaluation (ASHA's max_t) or falls behind at a rung,
    by aborting its TorchTrainer, so a trial's process rarely closes its own run: its status is decided
    here, from Tune's error and the evaluations it made.
    """
    experiment = sweep.base().tracking.experiment
    outcomes = []
    for result in results:
        history = result.metrics_dataframe
        scores = history[METRIC].dropna() if history is not None and METRIC in history else []
        trial_id = (result.metrics or {}).get("trial_id") or _TRIAL_DIR.match(Path(result.path).name)[1]
        # A trial that failed before reporting has no config in its Result; Tune wrote it beside.
        config = result.config or json.loads((Path(result.path) / "params.json").read_text())
        params = {p.key: config.get(p.key) for p in sweep.space}
        error = str(result.error).strip().splitlines()[-1][:300] if result.error else ""
        if error:
            status = "FAILED"
        else:
            trial = sweep.trial_config(params, f"{sweep.name}-{trial_id}", trials_folder(sweep))
            status = "FINISHED" if len(scores) >= planned_evaluations(trial, data) else "STOPPED"
        best = float(max(scores)) if len(scores) else None
        outcome = TrialOutcome(trial_id, params, status, best, len(scores), error)
        _close_trial_run(sweep, outcome, uri, experiment)
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: (o.best is None, -(o.best or 0.0)))


def planned_evaluations(run, data: PreparedData) -> int:
    return math.ceil(total_steps(run, data) / run.train.eval_every_steps)


def _close_trial_run(sweep: SweepConfig, outcome: TrialOutcome, uri: str, experiment: str) -> None:
    name = f"{sweep.name}-{outcome.trial_id}"
    run_id = find_run_by_name(uri, experiment, name)
    if run_id is None:  # failed before its run existed
        return
    tracker = Tracker.start(uri, experiment, name, run_id)
    if outcome.status == "STOPPED":
        tracker.client.set_tag(run_id, STOPPED_EARLY_TAG, "true")
    if outcome.evaluations:
        log_training_plots(tracker, {})
    tracker.finish({"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}[outcome.status])


def _sweep_params(sweep: SweepConfig) -> dict[str, str]:
    params = {
        "sweep.base": sweep.base_path,
        "sweep.algorithm": sweep.algorithm,
        "sweep.num_samples": sweep.num_samples,
        "sweep.metric": METRIC,
        "sweep.grace_period": sweep.grace_period,
        "sweep.reduction_factor": sweep.reduction_factor,
        "sweep.seed": sweep.seed,
        "sweep.trial_overrides": " ".join(sweep.trial_overrides),
    }
    return params | {f"space.{p.key}": f"{p.distribution}{list(p.values)}" for p in sweep.space}


def _log_summary(sweep: SweepConfig, parent: Tracker, outcomes: list[TrialOutcome]) -> None:
    """The parent run: the best trial's score and configuration, the leaderboard, score-by-parameter plots."""
    scored = [o for o in outcomes if o.best is not None]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("FINISHED", "STOPPED", "FAILED")}
    parent.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()}, 0)
    parent.log_dict_artifact([o.__dict__ for o in outcomes], "leaderboard.json")
    if not scored:
        return
    best = scored[0]
    parent.log_metrics({f"best_{METRIC}": best.best}, 0)
    parent.client.set_tag(parent.run_id, "promptswitch.best_trial", best.trial_id)
    name = f"{sweep.name}-best"
    parent.log_text(dump_config(sweep.full_config(best.params, name)), "best_config.yaml")
    parent.log_text(sweep.full_training_command(best.params, name) + "\n", "best_command.txt")
    with tempfile.TemporaryDirectory() as tmp:
        for p in sweep.space:
            path = Path(tmp) / f"{METRIC}_vs_{p.key}.png"
            _param_figure(p, scored).savefig(path, dpi=110)
            parent.log_file(path, "plots")


def _param_figure(param, scored: list[TrialOutcome]):
    fig, (ax,) = new_figure(5, 3.6)
    xs = [o.params[param.key] for o in scored]
    ys = [o.best for o in scored]
    markers = {"FINISHED": "o", "STOPPED": "x"}
    for status, marker in markers.items():
        pts = [(x, y) for x, y, o in zip(xs, ys, scored, strict=True) if o.status == status]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=status.lower())
    if param.distribution == "loguniform":
        ax.set_xscale("log")
    ax.set_xlabel(param.key)
    ax.set_ylabel("best validation t2v R@1 (%)")
    ax.set_title(f"{param.key} ({param.distribution})")
    ax.legend(loc="best", fontsize=8)
    return fig


def _print_leaderboard(sweep: SweepConfig, outcomes: list[TrialOutcome]) -> None:
    keys = [p.key for p in sweep.space]
    header = ["rank", "trial", "status", "evals", "val t2v R@1", *keys]
    rows = []
    for i, o in enumerate(outcomes, 1):
        values = [_short(o.params.get(k)) for k in keys]
        score = f"{o.best:.1f}" if o.best is not None else "-"
        rows.append([str(i), o.trial_id, o.status.lower(), str(o.evaluations), score, *values])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    print(f"\nSweep {sweep.name}: {len(outcomes)} trials, best by {METRIC}\n")
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    for o in outcomes:
        if o.error:
            print(f"  trial {o.trial_id} failed: {o.error}")
    best = next((o for o in outcomes if o.best is not None), None)
    if best:
        command = sweep.full_training_command(best.params, f"{sweep.name}-best")
        print(f"\nTrain the best configuration in full:\n  {command}")
    print(json.dumps({"best_trial": best.trial_id if best else None}), flush=True)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
