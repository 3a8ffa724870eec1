"""MLflow tracking for one training run: params, metrics, artifacts and the best model.

One process logs at a time (rank 0 of the Ray Train job during training, the driver before and after), so
a sqlite store is safe: SQLite answers "database is locked" to concurrent writers. Everything goes through
`mlflow.MlflowClient` with explicit run ids, never the fluent API's global active run, so a Ray worker and a
resumed run log to exactly the run they name.

    tracker = Tracker.start(uri, "promptswitch", "my-run", params={"train.epochs": "5"})
    tracker.log_metrics({"loss": 1.2}, step=10)
    tracker.finish()

Resuming (`Tracker.start(..., run_id=...)`) continues the same MLflow run: metrics are appended, params
already logged with the same value are skipped (MLflow params are immutable).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

if TYPE_CHECKING:
    from model.config import ModelConfig

log = logging.getLogger(__name__)

FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# Tag set on a run after `log_best_model`, so the run page links to the model.
BEST_MODEL_TAG = "promptswitch.best_model_uri"
_SQLITE_PREFIX = "sqlite:///"


def resolve_tracking_uri(config_uri: str | None, project_dir: Path) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a sqlite store `mlflow.db` in `project_dir`."""
    if config_uri:
        return config_uri
    if env_uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return env_uri
    return f"{_SQLITE_PREFIX}{Path(project_dir).resolve() / 'mlflow.db'}"


def find_run_by_name(uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the latest active run named `run_name` in `experiment`; None if there is none."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        return None
    if "'" not in run_name:
        query = f"attributes.run_name = '{run_name}'"
    elif '"' not in run_name:
        query = f'attributes.run_name = "{run_name}"'
    else:  # both quote characters: no way to quote it in a filter string, so filter here
        query = ""
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=query,
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1 if query else 50_000,
        order_by=["attributes.start_time DESC"],
    )
    return next((run.info.run_id for run in runs if run.info.run_name == run_name), None)


class Tracker:
    """One MLflow run, logged to by one process. Build it with `Tracker.start`."""

    def __init__(self, client: mlflow.MlflowClient, uri: str, experiment_id: str, run_id: str, run_name: str):
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id
        self._run_id = run_id
        self.run_name = run_name

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Tracker:
        """Start a new run in `experiment` (created if missing), or continue run `run_id` (resume).

        `params` are logged on a new run; on a resumed run only the keys not logged yet are added, and a
        key logged before with another value is kept (params are immutable), warned about and recorded as
        the tag `resumed_param.<key>`.
        """
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = _get_or_create_experiment(client, uri, experiment)
        params = {str(k): _param_value(k, v) for k, v in (params or {}).items()}
        new_tags = dict(tags or {})
        if run_id is None:
            run = client.create_run(experiment_id, run_name=run_name, tags=new_tags)
            run_id = run.info.run_id
            to_log = params
        else:
            try:
                run = client.get_run(run_id)
            except MlflowException as e:
                raise ValueError(f"cannot resume MLflow run {run_id}: not found at {uri}") from e
            if run.info.lifecycle_stage != "active":
                raise ValueError(f"cannot resume MLflow run {run_id}: it is deleted (restore it in the UI)")
            if run.info.experiment_id != experiment_id:
                log.warning(
                    "resuming MLflow run %s of experiment %s, not of %r",
                    run_id,
                    run.info.experiment_id,
                    experiment,
                )
                experiment_id = run.info.experiment_id
            run_name = run.info.run_name or run_name
            logged = run.data.params
            to_log = {k: v for k, v in params.items() if k not in logged}
            for key, value in params.items():
                if key in logged and logged[key] != value:
                    log.warning(
                        "param %r was %r when MLflow run %s started and is %r now; params are immutable, "
                        "so the new value is kept as the tag resumed_param.%s",
                        key, logged[key], run_id, value, key,
                    )  # fmt: skip
                    new_tags[f"resumed_param.{key}"] = value
            client.update_run(run_id, status="RUNNING")
        entries = [Param(k, v) for k, v in to_log.items()] + [RunTag(k, str(v)) for k, v in new_tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                run_id,
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
            )
        return cls(client, uri, experiment_id, run_id, run_name)

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log `metrics` at `step` in one batch (more than 1000 are split). Names may not contain '@'."""
        timestamp = int(time.time() * 1000)
        entries = [Metric(str(k), float(v), timestamp, int(step)) for k, v in metrics.items()]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._run_id, metrics=chunk)

    def last_step(self, key: str) -> int:
        """The highest step at which `key` was logged; 0 if never."""
        return max((m.step for m in self.client.get_metric_history(self._run_id, key)), default=0)

    def metric_history(self, *keys: str) -> dict[str, list[tuple[int, float]]]:
        """`{key: [(step, value), ...]}` as logged, for the keys the run has (e.g. to plot after a resume)."""
        history = {}
        for key in keys:
            points = sorted(
                self.client.get_metric_history(self._run_id, key), key=lambda m: (m.step, m.timestamp)
            )
            if points:
                history[key] = [(m.step, m.value) for m in points]
        return history

    def log_dict_artifact(self, obj: Any, name: str) -> None:
        """Write `obj` (dicts, lists, dataclasses) as JSON or YAML, by `name`'s extension, into the run."""
        suffix = Path(name).suffix.lower()
        data = _plain(obj)
        if suffix == ".json":
            text = json.dumps(data, indent=2, default=str) + "\n"
        elif suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        else:
            raise ValueError(f"log_dict_artifact: {name!r} must end in .json, .yaml or .yml")
        self.log_text(text, name)

    def log_text(self, text: str, name: str) -> None:
        """Write `text` as the artifact `name` (a run-relative path such as "notes/summary.txt")."""
        self.client.log_text(self._run_id, text, name)

    def log_file(self, path: Path | str, artifact_dir: str | None = None) -> None:
        """Copy the local file (or folder) `path` into the run's artifacts, under `artifact_dir` if given."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_file: {path} does not exist")
        self.client.log_artifact(self._run_id, str(path), artifact_dir)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish: status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        self.client.set_terminated(self._run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def log_best_model(
    tracker: Tracker,
    weights_path: Path,
    config_yaml: str,
    register_as: str | None,
    alias: str,
    *,
    step: int = 0,
) -> str:
    """Log the best weights as an MLflow "models from code" pyfunc model in `tracker`'s run.

    Nothing is pickled: the model is `orchestrator/tracking/mlflow_model.py` plus two artifacts, the
    safetensors `weights_path` and `config_yaml` (the run config; its `model:` section rebuilds the
    network). Its `predict` embeds the captions of a DataFrame's "caption" column; loading needs
    promptswitch installed.
    With `register_as`, the model becomes a new version of that registered model and gets `alias`
    (e.g. "best"; empty: no alias). `step` links the model to the run's metrics logged at that step.

    Returns the model URI: `models:/<name>/<version>` when registered, else `models:/<model id>`.
    """
    import numpy as np
    import pandas as pd
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"log_best_model: weights file {weights_path} does not exist")
    model_config = model_config_from_yaml(config_yaml)  # fail before logging anything
    embed_dim = model_config.clip["embed_dim"]
    client = tracker.client
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "caption")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim))]),
    )
    example = pd.DataFrame({"caption": ["a person is cooking in a kitchen", "a dog runs on the beach"]})
    # Created here, in the run's experiment: left to Model.log, the LoggedModel would be filed under the
    # fluent API's current experiment (the Default one, id 0) rather than the run's.
    logged = client.create_logged_model(
        experiment_id=tracker.experiment_id,
        name="model",
        source_run_id=tracker.run_id,
        params=client.get_run(tracker.run_id).data.params,
        model_type="promptswitch-text-encoder",
    )
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_yaml)
        # mlflow.pyfunc.log_model is Model.log(flavor=mlflow.pyfunc) without a run_id argument (it takes the
        # fluent active run); Model.log itself takes the run id, but reads the global tracking URI.
        try:
            with _global_tracking_uri(tracker.uri):
                info = Model.log(
                    artifact_path=None,  # positional in Model.log's signature, deprecated for name=
                    name="model",
                    flavor=mlflow.pyfunc,
                    run_id=tracker.run_id,
                    model_id=logged.model_id,
                    python_model=str(MODEL_CODE),
                    artifacts={"weights": str(weights_path), "config": str(config_path)},
                    signature=signature,
                    input_example=example,
                    pip_requirements=_pip_requirements(),
                    step=step,
                )
        except BaseException:
            with suppress(MlflowException):  # keep the original error; never leave the model PENDING
                if client.get_logged_model(logged.model_id).status != LoggedModelStatus.FAILED:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
    uri = info.model_uri  # models:/<model id>
    if register_as:
        _create_registered_model(client, register_as)
        # The registry resolves a models:/ source through the global tracking URI, not the client's.
        with _global_tracking_uri(tracker.uri):
            version = client.create_model_version(
                register_as, source=uri, run_id=tracker.run_id, model_id=logged.model_id
            )
        if alias:
            client.set_registered_model_alias(register_as, alias, version.version)
        uri = f"models:/{register_as}/{version.version}"
    client.set_tag(tracker.run_id, BEST_MODEL_TAG, uri)
    return uri


def model_config_from_yaml(text: str) -> ModelConfig:
    """The `ModelConfig` of a run config YAML (its `model:` section), validated."""
    from model.config import ConfigError, ModelConfig

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"the run config must be a YAML mapping, got {type(data).__name__}")
    try:
        from orchestrator.config_io import config_from_dict
    except ModuleNotFoundError as e:
        if e.name != "orchestrator.config_io":
            raise
    else:
        return config_from_dict(data).model
    section = data.get("model") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"model: must be a mapping, got {section!r}")
    names = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    unknown = sorted(set(section) - names - {"clip"})  # clip is derived from the name
    if unknown:
        raise ConfigError(f"unknown model keys {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return ModelConfig(**{k: v for k, v in section.items() if k in names})


# ---- helpers -------------------------------------------------------------------------------------------


def _get_or_create_experiment(client: mlflow.MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_default_artifact_location(uri, name))
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            exp = client.get_experiment_by_name(name)  # another process created it just now
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`) or choose another tracking.experiment"
        )
    return exp.experiment_id


def _default_artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a sqlite file; MLflow's own default is ./mlruns in whatever the current directory is."""
    if not uri.startswith(_SQLITE_PREFIX) or uri.rstrip("/") == _SQLITE_PREFIX.rstrip("/"):
        return None  # a server decides (proxied artifacts), or an in-memory sqlite
    db = Path(uri[len(_SQLITE_PREFIX) :].split("?", 1)[0])
    if str(db) in ("", ":memory:"):
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
    return str(db.resolve().parent / "mlartifacts" / safe)


def _create_registered_model(client: mlflow.MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


@contextmanager
def _global_tracking_uri(uri: str):
    """Point MLflow's process-wide tracking URI at `uri` for a call that reads it, then put it back."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = getattr(tracking_utils, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # also exports MLFLOW_TRACKING_URI
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _pip_requirements() -> list[str]:
    """Pinned to this environment; given explicitly so MLflow does not load the model in a subprocess."""
    reqs = []
    for dist in ("mlflow", "torch", "open_clip_torch", "safetensors", "pyyaml", "pandas", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _param_value(key: str, value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        log.warning("param %r is %d characters; MLflow keeps %d", key, len(text), MAX_PARAM_VAL_LENGTH)
        text = text[:MAX_PARAM_VAL_LENGTH]
    return text


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _plain(obj: Any) -> Any:
    """Dataclasses, tuples and paths as plain dicts, lists and strings (what JSON and safe YAML write)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _plain(obj.item())
    return str(obj)
