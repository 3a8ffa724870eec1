"""The manifest: one Arrow table of (video, caption) pairs that every dataset reader produces.

One row per caption, so a training epoch is one sample per pair (docs/data.md §3). Paths are absolute, so a
manifest can be used from any working directory and by any Ray worker on a shared filesystem.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "val", "test")

SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_path", pa.string()),
        ("caption", pa.string()),
        ("split", pa.string()),
    ],
    metadata={"promptswitch": "manifest-v1"},
)


def write_manifest(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(SCHEMA.names).cast(SCHEMA), path)


def read_manifest(path: str | Path) -> pa.Table:
    """A manifest written by `write_manifest` (e.g. by `promptswitch data prepare`)."""
    check_manifest(path)
    return pq.read_table(path).select(SCHEMA.names).cast(SCHEMA)


def check_manifest(path: str | Path) -> None:
    """That `path` is a manifest (from its schema alone: a reader may then stream it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {str(path)!r} does not exist; make one with `promptswitch data prepare`"
        )
    missing = [name for name in SCHEMA.names if name not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{str(path)!r} is not a promptswitch manifest: columns {missing} are missing")
