"""The machine's load beside the training metrics: what MLflow shows in a run's System metrics tab.

A thread samples rank 0's node every `interval` seconds (CPU, memory, and on a GPU its memory and, where
NVML is installed, its utilisation) and hands the samples to the run's `MetricQueue`, under MLflow's own
`system/` names: like every other metric, they never hold training back and survive a tracking outage.
"""

from __future__ import annotations

import contextlib
import threading

import psutil
import torch

INTERVAL_S = 10.0


class SystemMetrics:
    def __init__(self, queue, device: torch.device, interval: float = INTERVAL_S, first_step: int = 0):
        self.queue, self.device, self.interval = queue, device, interval
        self.step = first_step
        self._stop = threading.Event()
        psutil.cpu_percent()  # the first reading starts the interval the next one measures
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        out = {
            "system/cpu_utilization_percentage": psutil.cpu_percent(),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
            "system/system_memory_usage_percentage": memory.percent,
        }
        if self.device.type == "cuda":
            gpu = f"system/gpu_{self.device.index or 0}"
            out[f"{gpu}_memory_usage_megabytes"] = torch.cuda.memory_reserved(self.device) / 2**20
            with contextlib.suppress(ModuleNotFoundError, RuntimeError):  # without NVML (nvidia-ml-py)
                out[f"{gpu}_utilization_percentage"] = float(torch.cuda.utilization(self.device))
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.queue.log(self.sample(), self.step)
            self.step += 1
