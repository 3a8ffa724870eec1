"""What the user sees: the product's own lines on the console, the libraries' internals in a log file.

A job's console shows what the user asked for: progress (a line per logging window), validation lines, the
final table and where to look in MLflow. Everything else goes to the job's log file, and with `--verbose` to
the console as well:

- Python logging of Ray, Ray Data, Ray Train and Tune, MLflow and the libraries under them, and warnings;
- what Ray's workers print (execution plans, `TrainingReport(...)` lines, deprecation warnings): Ray sends
  every worker's output to the driver, where `route_worker_output` keeps the lines marked by `to_console`;
- what Ray's C++ core writes to the driver's stderr, by pointing file descriptor 2 at the log file while
  Python's `sys.stderr` keeps the terminal (errors and tracebacks still show).

Ray's own session logs stay where Ray keeps them (the log file says where).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

# Starts every line a worker means for the user's console. Invisible where no driver of ours filters it (a
# job submitted with `ray job submit` shows Ray's forwarded output as it is).
MARK = "\u200b"

# Loggers of the libraries whose records go to the log file rather than the console.
LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic", "urllib3", "filelock", "fsspec", "py.warnings")

_log = None  # the open log file of this process's job, once `job_log` has opened it
_verbose = False
_ray_print = None  # Ray's printer of worker output, while `route_worker_output` stands in for it
# The name ray._private.worker.connect registers its printer of worker output under.
_RAY_PRINTER = "ray_print_logs"


def to_console(line: str) -> None:
    """Print `line` for the user: from a Ray worker it reaches the driver's console, marked to be kept.

    Ray Train patches `print` in its workers to log each line, and prints the line as well whenever
    sys.stdout is wrapped by some library, as it is in these workers: every line came out twice. Printing to
    the real stdout bypasses the patch; Ray still forwards that stream to the driver.
    """
    print(MARK + line, file=sys.__stdout__, flush=True)


@contextlib.contextmanager
def job_log(folder: Path | str, verbose: bool = False):
    """Send the libraries' output to `folder/<time>.log` for the duration; yields the log's path."""
    global _log, _verbose
    path = Path(folder) / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    _log, _verbose = open(path, "a", buffering=1), verbose  # noqa: SIM115 (closed in `finally`)
    import mlflow  # noqa: F401  (MLflow and Ray Data set up their loggers when imported: quiet them after)
    import ray.data  # noqa: F401

    handler = logging.StreamHandler(_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    saved = {}
    for name in _library_loggers():
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
        if not verbose:
            for h in _console_handlers(logger):
                logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    if verbose:
        logging.getLogger("py.warnings").addHandler(logging.StreamHandler(sys.stderr))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", str(verbose).lower())
    # MLflow prints a link to each run it ends on a server: a sweep's server is gone when the sweep is.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    stderr = None if verbose else _point_stderr_at(_log)
    try:
        yield path
    finally:
        _restore_worker_output()
        if stderr is not None:
            _restore_stderr(*stderr)
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate, logger.level = propagate, level
        logging.captureWarnings(False)
        _log.close()
        _log = None


@contextlib.contextmanager
def ray_session(
    address: str | None, log_folder: Path | str, verbose: bool = False, say=None, dashboard: bool = False
):
    """Connected to Ray, with the libraries' output going to a log file in `log_folder` (`job_log`); the
    first line on `say` (default stdout) says where. A local cluster runs without Ray's dashboard unless
    `dashboard`: its ten processes hold about half a gigabyte (measured), a laptop's share of a demo."""
    from orchestrator.ray_runtime import connect

    with job_log(log_folder, verbose) as log:
        joined = connect(address, dashboard=dashboard)
        print(f"Ray: {joined}; Ray's and the libraries' output: {log}", file=say, flush=True)
        route_worker_output()
        yield log


def route_worker_output() -> None:
    """After Ray is connected: what Ray's workers print goes to the log file, except the lines they mean for
    the console (`to_console`); with --verbose, everything shows as Ray shows it."""
    global _ray_print
    if _log is None:
        return
    import ray
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    (ray_print,) = [h for name, h in dispatcher.handlers if name == _RAY_PRINTER] or [None]
    if ray_print is None:  # connected with log_to_driver=False: nothing reaches this process
        return
    log, _ray_print = _log, ray_print

    def show(data: dict) -> None:
        if log.closed:  # the job is over; Ray's printer is back in a moment
            return
        kept = [line.removeprefix(MARK) for line in data["lines"] if line.startswith(MARK)]
        other = [line for line in data["lines"] if not line.startswith(MARK)]
        for line in kept:
            print(line, flush=True)
        who = data.get("actor_name") or data.get("task_name") or "worker"
        for line in other:
            print(f"({who} pid={data.get('pid')}) {line}", file=log)
        if _verbose and other:
            ray_print(dict(data, lines=other))

    with contextlib.suppress(Exception):  # a private path of Ray's: worth a line, not a failure
        print(f"Ray's own logs: {ray._private.worker._global_node.get_logs_dir_path()}", file=log)
    dispatcher.remove_handler(_RAY_PRINTER)
    dispatcher.add_handler(_RAY_PRINTER, show)


def _restore_worker_output() -> None:
    global _ray_print
    if _ray_print is not None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        dispatcher.remove_handler(_RAY_PRINTER)
        dispatcher.add_handler(_RAY_PRINTER, _ray_print)
        _ray_print = None


def _library_loggers() -> list[str]:
    """The libraries' top loggers, and those under them that print on their own (Ray Data's does)."""
    existing = logging.root.manager.loggerDict
    own = [
        name
        for name, logger in existing.items()
        if name.split(".")[0] in LIBRARY_LOGGERS
        and isinstance(logger, logging.Logger)
        and not logger.propagate
        and logger.handlers
    ]
    return sorted(set(LIBRARY_LOGGERS) | set(own))


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def _point_stderr_at(log) -> tuple[int, object]:
    """File descriptor 2 (where C++ code and child processes write) to the log; `sys.stderr` (Python's
    errors and tracebacks) to the terminal that descriptor 2 was."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", buffering=1, closefd=True)  # noqa: SIM115
    return terminal, python_stderr


def _restore_stderr(terminal: int, python_stderr) -> None:
    sys.stderr.flush()
    sys.stderr.close()
    os.dup2(terminal, 2)
    os.close(terminal)
    sys.stderr = python_stderr
