"""Where checkpoints go: a local (or shared-mount) folder, or a URI that pyarrow reads (`s3://`, `gs://`).

A URI may carry pyarrow's options in its query, such as an S3-compatible server's address
(`s3://bucket/runs?endpoint_override=http://10.0.0.5:9000&scheme=http`): Ray Train gets the file system
built from it and the path inside it, so the options reach every worker with the file system.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def is_uri(storage_path: str) -> bool:
    return "://" in storage_path


def location(storage_path: str) -> tuple[pafs.FileSystem | None, str]:
    """(file system, path) for Ray Train's `storage_filesystem` and `storage_path`; no file system for a
    local folder, which Ray opens itself."""
    if not is_uri(storage_path):
        return None, str(Path(storage_path).absolute())
    return pafs.FileSystem.from_uri(storage_path)


def join(storage_path: str, *parts: str) -> str:
    """`storage_path` with `parts` appended to its path, a URI's query kept at the end."""
    base, _, query = storage_path.partition("?")
    joined = "/".join([base.rstrip("/"), *parts])
    return f"{joined}?{query}" if query else joined


def exists(storage_path: str) -> bool:
    fs, path = location(storage_path)
    if fs is None:
        return Path(path).exists()
    return fs.get_file_info(path).type != pafs.FileType.NotFound
