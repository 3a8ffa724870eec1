"""A library on disk: Parquet shards of embeddings, the model that made them, and a manifest.

    <library>/manifest.json                  model source and digest, dimension, sampling, counts, versions
    <library>/model/{model.safetensors,config.yaml}   a copy of the model: searching needs its text tower
    <library>/shards/shard-00000.parquet     one row per video or segment (SCHEMA)
    <library>/index/                          an approximate index, when one was built

A shard is written whole (to a temporary name, then renamed), so a killed job loses at most the shard it
was filling, and a run again finds every finished shard. A video embedded again because it changed lives in
a later shard: the latest shard that holds a video is the one that counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
SHARDS = "shards"
MODEL_DIR = "model"
INDEX_DIR = "index"
# What identifies a video's file: a video whose path, size or modification time changed is embedded again.
IDENTITY = ("video_path", "size", "mtime_ns")
RECORD_COLUMNS = ("video_id", "video_path", "start_s", "end_s")  # what a search hit says about its row
INDEX_FILE = "index.faiss"  # under INDEX_DIR; the manifest's "index" entry says what it is


def schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("video_path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("start_s", pa.float64()),  # the segment's time range; the whole video for a short clip
            ("end_s", pa.float64()),
            # L2-normalised; zeros for a video that failed (a null list does not survive Parquet here)
            ("embedding", pa.list_(value, dim)),
            ("error", pa.string()),  # empty when the video decoded
        ]
    )


def shard_paths(library: Path) -> list[Path]:
    return sorted((library / SHARDS).glob("shard-*.parquet"))


def write_shard(library: Path, rows: pa.Table) -> Path:
    folder = library / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    existing = shard_paths(library)
    number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
    final = folder / f"shard-{number:05d}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(rows, tmp)
    os.replace(tmp, final)
    return final


def read_rows(library: Path, columns: list[str] | None = None) -> pa.Table:
    """Every current row, in shard order: rows of a video that a later shard holds again are dropped."""
    wanted = None if columns is None else sorted({*columns, "video_path"})
    tables = [pq.read_table(path, columns=wanted) for path in shard_paths(library)]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or ["video_path"])})
    shard = pa.chunked_array([pa.array(np.full(len(t), n, np.int32)) for n, t in enumerate(tables)])
    rows = pa.concat_tables(tables)
    # In Arrow, not Python objects: a library of millions of rows is read in its columns' memory alone.
    latest = pa.table({"video_path": rows["video_path"], "shard": shard}).group_by("video_path").aggregate(
        [("shard", "max")]
    )
    newest = pc.take(latest["shard_max"], pc.index_in(rows["video_path"], value_set=latest["video_path"]))
    rows = rows.filter(pc.equal(shard, newest))
    return rows.select(columns) if columns else rows


def searchable(library: Path, dim: int) -> tuple[pa.Table, np.ndarray]:
    """(records, vectors) of the rows that embedded, row i of one being row i of the other: what an index
    is built over and what its row numbers mean."""
    rows = read_rows(library, [*RECORD_COLUMNS, "embedding", "error"])
    if not rows.num_rows:
        empty = pa.table({c: pa.array([], pa.string()) for c in RECORD_COLUMNS})
        return empty, np.zeros((0, dim), np.float32)
    rows = rows.filter(pc.equal(rows["error"], ""))
    return rows.select(list(RECORD_COLUMNS)), as_matrix(rows["embedding"])


def as_matrix(embeddings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, dim) float32 of an `embedding` column (fixed-size lists of float32 or float16)."""
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    flat = embeddings.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, embeddings.type.list_size), dtype=np.float32)


def fingerprint(library: Path) -> str:
    """Names and sizes of the shards: an index built over other shards does not match the rows."""
    digest = hashlib.sha256()
    for path in shard_paths(library):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return digest.hexdigest()[:16]


def identity_key(rows: pa.Table) -> pa.Array:
    """One string per row that names its video file's `IDENTITY`."""
    parts = [rows["video_path"], *(pc.cast(rows[c], pa.string()) for c in IDENTITY[1:])]
    key = pc.binary_join_element_wise(*parts, "\0")
    return key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key


def identity_keys(library: Path) -> pa.Array:
    """`identity_key` of every video the library holds, embedded or reported bad."""
    rows = read_rows(library, list(IDENTITY))
    return identity_key(rows) if rows.num_rows else pa.array([], pa.string())


def counts(library: Path) -> dict[str, int]:
    """Videos, searchable rows and bad videos of the library as it stands."""
    rows = read_rows(library, ["video_path", "error"])
    if not rows.num_rows:
        return {"videos": 0, "rows": 0, "bad_videos": 0}
    ok = pc.equal(rows["error"], "")
    return {
        "videos": pc.count_distinct(rows["video_path"]).as_py(),
        "rows": pc.sum(ok).as_py() or 0,
        "bad_videos": pc.count_distinct(rows["video_path"].filter(pc.invert(ok))).as_py(),
    }


def read_manifest(library: Path) -> dict | None:
    path = library / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(library: Path, manifest: dict) -> None:
    library.mkdir(parents=True, exist_ok=True)
    tmp = library / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, library / MANIFEST)
