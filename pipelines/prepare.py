"""`promptswitch data prepare`: annotations + videos folder -> a checked manifest file.

Reading is readers.py's job; this adds the filesystem check, so that a missing video fails here in seconds
rather than in a data-loader worker hours into a training run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.manifest import SPLITS, write_manifest
from pipelines.readers import FileIndex, read_annotations

SHOWN_MISSING = 20  # paths listed in a MissingVideosError message; the rest are only counted


class MissingVideosError(RuntimeError):
    """Videos named by the annotations are not on disk; the message lists the first 20 and the count."""


def prepare_manifest(
    dataset: str,
    annotations: str | Path,
    videos: str | Path | None,
    out: str | Path,
    *,
    allow_missing: bool = False,
    val_fraction: float = 0.05,
    seed: int = 24,
) -> dict[str, Any]:
    """Read `dataset` (see readers.read_annotations), check its videos exist, write the manifest to `out`.

    Each distinct video file must exist; without `allow_missing` any missing one raises MissingVideosError
    and nothing is written. With it, their rows are dropped and their paths listed under "missing", unless
    every video is missing (surely a wrong videos folder), which still raises. Returns the summary
    {"splits": {split: {"videos", "captions"}}, "missing_videos", "bad_rows", "absent_splits", "manifest"},
    where the split counts are those of the annotations, before missing videos are dropped, and absent
    splits are left out of "splits".
    """
    result = read_annotations(dataset, annotations, videos, val_fraction=val_fraction, seed=seed)
    table = result.table
    out = Path(os.path.abspath(os.fspath(out)))
    summary: dict[str, Any] = {
        "splits": split_counts(table),
        "missing_videos": 0,
        "bad_rows": result.bad_rows,
        "absent_splits": dict(result.absent_splits),
        "manifest": str(out),
    }
    index = FileIndex()  # one listing per folder, not one stat per video (or worse, per caption)
    paths = list(dict.fromkeys(table.column("video_path").to_pylist()))
    missing = [path for path in paths if not index.is_file(path)]
    if missing:
        if not allow_missing or len(missing) == len(paths):
            raise MissingVideosError(_missing_message(missing, len(paths)))
        gone = pc.is_in(table["video_path"], value_set=pa.array(missing, pa.string()))
        table = table.filter(pc.invert(gone))
        summary["missing_videos"] = len(missing)
        summary["missing"] = missing
    write_manifest(table, out)
    return summary


def split_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """{split: {"videos": distinct video ids, "captions": rows}} for each split that has rows."""
    counts = {}
    for split in SPLITS:
        rows = table.filter(pc.equal(table["split"], split))
        if rows.num_rows:
            counts[split] = {"videos": pc.count_distinct(rows["video_id"]).as_py(), "captions": rows.num_rows}
    return counts


def _missing_message(missing: list[str], total: int) -> str:
    shown = "\n".join(f"  {path}" for path in missing[:SHOWN_MISSING])
    more = f"\n  ... and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
    if len(missing) == total:
        hint = "none of the videos exist: is the videos folder right?"
    else:
        hint = "fetch them, or allow missing videos (--allow-missing) to drop their rows"
    return f"{len(missing)} of {total} videos are missing:\n{shown}{more}\n{hint}"
