"""The scan's verdict on each video, kept beside the manifest: a restarted run does not decode every video
again to find the bad ones.

A video's entry holds while its file is the same (path, size, modification time) and the scan would decode
the same frames (the settings stored in the file's metadata); any other video is scanned again. The file is
`.<manifest name>.scan.parquet` beside the manifest; where that folder cannot be written, nothing is kept
and every run scans.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.decode import INFO_COLUMNS
from pipelines.video import VideoInfo

log = logging.getLogger(__name__)
VERSION = 1
_META = b"promptswitch.scan"


def memory_path(manifest: str | Path) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(f".{manifest.name}.scan.parquet")


Verdicts = dict[str, tuple[str, VideoInfo | None]]  # {video path: (error, info)}; the info of a good video


def recall(manifest: str | Path, settings: dict, identities: dict[str, tuple[int, int]]) -> Verdicts:
    """{path: (error, info)} of the videos whose kept verdict still holds; `identities` are the videos'
    `file_identity` now."""
    path = memory_path(manifest)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return {}
    stored = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    if stored != {"version": VERSION, **settings}:
        return {}
    held = {}
    for row in table.to_pylist():
        if identities.get(row["video_path"]) == (row["size"], row["mtime_ns"]) and row["size"] >= 0:
            info = VideoInfo(*(row[k] for k in INFO_COLUMNS)) if not row["error"] else None
            held[row["video_path"]] = (row["error"], info)
    return held


def remember(
    manifest: str | Path, settings: dict, verdicts: Verdicts, identities: dict[str, tuple[int, int]]
) -> None:
    """Keep {path: (error, info)} with each video's identity; written to a temporary name, then renamed."""
    rows = []
    for video, (error, info) in verdicts.items():
        size, mtime = identities[video]
        row = {"video_path": video, "size": size, "mtime_ns": mtime, "error": error}
        rows.append(row | {k: getattr(info, k) if info else 0 for k in INFO_COLUMNS})
    meta = {_META: json.dumps({"version": VERSION, **settings})}
    table = pa.Table.from_pylist(rows).replace_schema_metadata(meta)
    path = memory_path(manifest)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot keep the scan's result beside the manifest (%s): the next run scans again", e)
