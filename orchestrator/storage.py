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


def run_folder(run) -> str:
    """Where a run (a `RunConfig`) keeps its checkpoints and logs: its name under its storage path."""
    return join(run.storage_path, run.name)


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


def latest_checkpoint(run_folder: str, marker: str) -> str | None:
    """The run's latest `checkpoint_*` folder that holds `marker` (the file a checkpoint writes last, so a
    folder cut short is passed over), as a path or URI like `run_folder`; Ray Train numbers them in order.
    None when there is none, or no `run_folder`."""
    fs, path = location(run_folder)
    local = fs is None
    fs = fs or pafs.LocalFileSystem()
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    folders = sorted(
        f.base_name
        for f in found
        if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")
    )
    for name in reversed(folders):
        if fs.get_file_info(f"{path}/{name}/{marker}").type == pafs.FileType.File:
            return str(Path(path) / name) if local else join(run_folder, name)
    return None


def read_text(uri_or_path: str) -> str:
    fs, path = location(uri_or_path)
    if fs is None:
        return Path(path).read_text()
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def move_aside(run_folder: str, suffix: str) -> str:
    """Move a run's folder to `<folder>.<suffix>`, kept whole: nothing of a replaced run is deleted."""
    base, _, query = run_folder.partition("?")
    target = f"{base.rstrip('/')}.{suffix}" + (f"?{query}" if query else "")
    fs, src = location(run_folder)
    if fs is None:
        Path(src).rename(location(target)[1])
    else:
        dst = location(target)[1]
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)
    return target
