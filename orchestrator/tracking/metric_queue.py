"""Training metrics delivered to MLflow by a thread of their own: the training loop never waits on the server.

`log` only appends to a queue. A daemon thread sends the queue in order, in batches, and when the server
does not answer it keeps the metrics and tries again with backoff for as long as the run lasts: an outage
of any length costs the loop nothing and loses nothing. `pending()` is what has not reached the server
yet; a checkpoint stores it, so that a run killed during an outage delivers those metrics when it resumes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Mapping

from mlflow.entities import Metric

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit on metrics per log_batch
MAX_BACKOFF_S = 30.0


class MetricQueue:
    def __init__(self, client, run_id: str, pending: Iterable[Iterable] = ()):
        """`client`: an MlflowClient; `pending`: (key, value, timestamp_ms, step) left by a checkpoint."""
        self.client, self.run_id = client, run_id
        self._queue: collections.deque[tuple] = collections.deque(tuple(m) for m in pending)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._deliver, name="mlflow-metrics", daemon=True)
        self._thread.start()
        self._wake.set()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue `metrics` at `step`, stamped now; returns at once."""
        now = int(time.time() * 1000)
        with self._lock:
            self._queue.extend((str(k), float(v), now, int(step)) for k, v in metrics.items())
        self._wake.set()

    def pending(self) -> list[list]:
        """What the server has not acknowledged yet, oldest first, as JSON-ready lists."""
        with self._lock:
            return [list(m) for m in self._queue]

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to empty; True when it has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue:
                    return True
            self._wake.set()
            time.sleep(0.05)
        with self._lock:
            return not self._queue

    def close(self, timeout: float) -> bool:
        """Flush, then stop the thread; True when everything was delivered."""
        done = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=1.0)
        return done

    def _deliver(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                with self._lock:
                    batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                if not batch:
                    break
                try:
                    self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in batch])
                except Exception as e:  # the server is away: keep them, try again after a pause
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        log.warning("MLflow does not take metrics (%s); keeping them and retrying", e)
                    # New metrics do not cut the pause short: retrying at every step would spin.
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, MAX_BACKOFF_S)
                    continue
                with self._lock:
                    for _ in batch:
                        self._queue.popleft()
                if self._failing_since is not None:
                    log.warning(
                        "MLflow takes metrics again after %.0f s; the kept ones are delivered",
                        time.monotonic() - self._failing_since,
                    )
                    self._failing_since, backoff = None, 1.0
