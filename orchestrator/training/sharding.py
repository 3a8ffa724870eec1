"""How a training job's datasets are shared among its workers.

Kept in a module of its own that imports no torch: Ray Train's dataset-manager actor unpickles this class, and
importing it from the job's module would load torch into that actor (half a gigabyte, measured, for nothing).
"""

from __future__ import annotations

import ray.train


class ShareValidation(ray.train.DataConfig):
    """Training pairs split evenly over the workers, as Ray Train does (every rank's step the same size);
    the validation videos split unevenly, none dropped, so each worker embeds its share and none is lost.

    Ray Train's own split of a dataset drops rows to make the shares equal: validation would lose videos.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        shared = {k: v for k, v in datasets.items() if k != "val"}
        output = super().configure(shared, world_size, worker_handles, worker_node_ids, **kwargs)
        if "val" in datasets:
            val = datasets["val"].copy(datasets["val"])
            val.set_name("val")
            val.context.execution_options = self.default_ingest_options()
            hints = worker_node_ids if self._enable_shard_locality else None
            for rank, share in enumerate(val.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[rank]["val"] = share
        return output
