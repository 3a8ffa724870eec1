"""Dataset readers: each benchmark's annotation files (or a user's own list) -> one manifest table.

Every reader yields rows of (video_id, absolute video_path, caption, split), one row per caption, grouped by
split in SPLITS order, ready for `write_manifest`. What counts as what:

- fatal, AnnotationError naming the file and the line or key: invalid JSON or CSV, a missing key or column,
  a row with the wrong number of columns, an empty video id or video path, an unknown split. The file is
  not what we think it is, and going on would build a silently wrong manifest.
- skippable, counted in ReadResult.bad_rows: an empty caption, or a listed video with no captions at all.
  Both occur in real releases and cost one pair (or one video) each, nothing else.
- absent, in ReadResult.absent_splits: a split whose annotation file is not there. The other splits are
  still read; only when no split at all has rows is it an error (FileNotFoundError).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import SCHEMA, SPLITS

DATASETS = ("msrvtt-9k", "msrvtt-7k", "msvd", "lsmdc", "manifest")

MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_TRAIN = "MSRVTT_train.{}.csv"  # 9k or 7k
MSRVTT_TEST = "MSRVTT_JSFUSION_test.csv"  # the 1k-A split, one caption per video
MSVD_CAPTIONS = "captions_msvd.json"
MSVD_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
LSMDC_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
# a user manifest's accepted column names, first match wins; video_path and caption are required
MANIFEST_COLUMNS = {
    "video_path": ("video_path", "video", "path"),
    "caption": ("caption", "text", "sentence"),
    "video_id": ("video_id",),
    "split": ("split",),
}

Row = tuple[str, str, str]  # (video_id, video_path, caption)


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and the line number or the key."""


@dataclass
class ReadResult:
    table: pa.Table  # pipelines.manifest.SCHEMA, rows grouped by split in SPLITS order
    absent_splits: dict[str, str] = field(default_factory=dict)  # split -> why it has no rows
    bad_rows: int = 0  # skipped rows: empty captions, listed videos without any caption


class FileIndex:
    """Whether a file exists, answered from one cached directory listing per folder.

    10k videos in a few folders cost a few scandir calls instead of 10k stats, which matters on network
    filesystems where every stat is a round trip.
    """

    def __init__(self) -> None:
        self._listings: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def _listing(self, folder: str) -> tuple[frozenset[str], frozenset[str]]:
        if folder not in self._listings:
            files, dirs = set(), set()
            try:
                with os.scandir(folder or ".") as entries:
                    for entry in entries:
                        if entry.is_file():  # follows symlinks: a linked video counts, a dangling link not
                            files.add(entry.name)
                        elif entry.is_dir():
                            dirs.add(entry.name)
            except (FileNotFoundError, NotADirectoryError):
                pass  # a folder that is not there holds no videos; the caller reports them missing
            self._listings[folder] = (frozenset(files), frozenset(dirs))
        return self._listings[folder]

    def is_file(self, path: str | Path) -> bool:
        folder, name = os.path.split(os.fspath(path))
        return name in self._listing(folder)[0]

    def is_dir(self, path: str | Path) -> bool:
        folder, name = os.path.split(os.fspath(path))
        return name in self._listing(folder)[1]


def read_annotations(
    dataset: str,
    annotations: str | Path,
    videos: str | Path | None,
    *,
    val_fraction: float = 0.05,
    seed: int = 24,
) -> ReadResult:
    """Read `dataset`'s annotations into one manifest table; see the module docstring for what is fatal.

    `annotations` is the folder with the annotation files, or for `manifest` the manifest file itself.
    `videos` is the videos folder (required except for `manifest`, where it is the base of relative paths,
    defaulting to the manifest's folder). Splits whose files are absent go into `absent_splits` with a
    reason. Where a dataset has no val split (MSR-VTT; LSMDC or a user manifest without one), `val_fraction`
    of the training videos, whole videos with all their captions, are held out as val, chosen by `seed`.
    Video files are not checked here (LSMDC only looks at folders to pick a layout): see prepare.py.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    annotations = _absolute(annotations)
    videos = None if videos is None else _absolute(videos)
    reading = _Reading()
    if dataset == "manifest":
        if not annotations.is_file():
            raise FileNotFoundError(f"manifest file {annotations} does not exist")
        _read_user_manifest(annotations, videos or annotations.parent, reading, val_fraction, seed)
    else:
        if videos is None:
            raise ValueError(f"dataset {dataset} needs the videos folder (--videos)")
        if not annotations.is_dir():
            raise FileNotFoundError(f"annotations folder {annotations} does not exist")
        if dataset.startswith("msrvtt"):
            _read_msrvtt(annotations, videos, dataset.split("-")[1], reading, val_fraction, seed)
        elif dataset == "msvd":
            _read_msvd(annotations, videos, reading)
        else:
            _read_lsmdc(annotations, videos, reading, val_fraction, seed)
    return reading.finish(f"{dataset} in {annotations}")


def holdout_video_ids(video_ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The training videos to hold out as val: round(fraction * n) of them, at least one and never all.

    Videos are ranked by a hash of (seed, id) rather than a shuffle, so the choice is the same on every
    Python version and in whatever order the annotations list them, and a larger fraction holds out a
    superset of a smaller one.
    """
    ids = set(video_ids)
    if fraction <= 0 or len(ids) < 2:
        return set()
    k = min(max(1, math.floor(fraction * len(ids) + 0.5)), len(ids) - 1)
    ranked = sorted(ids, key=lambda v: hashlib.sha256(f"{seed}\0{v}".encode()).digest())
    return set(ranked[:k])


# -----------------------------------------------------------------------------


@dataclass
class _Reading:
    rows: dict[str, list[Row]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    absent: dict[str, str] = field(default_factory=dict)
    bad: int = 0

    def hold_out_val(self, fraction: float, seed: int, why: str) -> None:
        """Move a seeded `fraction` of the training videos to val; `why` says why there is no val file."""
        train = self.rows["train"]
        if not train:
            self.absent["val"] = f"{why}, and train is absent ({self.absent.get('train', 'no rows')})"
            return
        val_ids = holdout_video_ids((row[0] for row in train), fraction, seed)
        if not val_ids:
            self.absent["val"] = f"{why}, and val_fraction={fraction} holds out no training videos"
            return
        self.rows["val"] = [row for row in train if row[0] in val_ids]
        self.rows["train"] = [row for row in train if row[0] not in val_ids]

    def finish(self, what: str) -> ReadResult:
        for split in SPLITS:  # every split either has rows or a reason, so callers need check only one
            if not self.rows[split]:
                self.absent.setdefault(split, "every row of its annotation file was skipped")
        absent = {split: self.absent[split] for split in SPLITS if split in self.absent}
        if len(absent) == len(SPLITS):
            reasons = "; ".join(f"{split}: {reason}" for split, reason in absent.items())
            raise FileNotFoundError(f"nothing to prepare for {what}: {reasons}")
        ordered = [(*row, split) for split in SPLITS for row in self.rows[split]]
        columns = [list(column) for column in zip(*ordered, strict=True)]
        table = pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=SCHEMA)
        return ReadResult(table=table, absent_splits=absent, bad_rows=self.bad)


def _read_msrvtt(
    ann: Path, videos: Path, variant: str, reading: _Reading, fraction: float, seed: int
) -> None:
    train_csv, data_json, test_csv = ann / MSRVTT_TRAIN.format(variant), ann / MSRVTT_DATA, ann / MSRVTT_TEST
    needed = [p.name for p in (data_json, train_csv) if not p.is_file()]
    if needed:
        reading.absent["train"] = f"{' and '.join(needed)} not found in {ann}"
    else:
        captions = _msrvtt_captions(data_json)
        _, records = _csv_table(train_csv, required=("video_id",))
        seen: set[str] = set()
        for line, record in records:
            vid = _cell(train_csv, line, record, "video_id")
            if vid in seen:
                continue
            seen.add(vid)
            texts = [t for t in captions.get(vid, []) if t]
            reading.bad += _skipped(len(captions.get(vid, [])), len(texts))
            path = str(videos / f"{vid}.mp4")
            reading.rows["train"] += [(vid, path, text) for text in texts]
    reading.hold_out_val(fraction, seed, "MSR-VTT has no val split")
    if not test_csv.is_file():
        reading.absent["test"] = f"{MSRVTT_TEST} not found in {ann}"
        return
    _, records = _csv_table(test_csv, required=("video_id", "sentence"))
    for line, record in records:
        vid, text = _cell(test_csv, line, record, "video_id"), record["sentence"].strip()
        if not text:
            reading.bad += 1
            continue
        reading.rows["test"].append((vid, str(videos / f"{vid}.mp4"), text))


def _msrvtt_captions(path: Path) -> dict[str, list[str]]:
    """video id -> its captions (empty ones kept, so the caller counts them only for videos it uses)."""
    data = _load_json(path)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise AnnotationError(f"{path}: no 'sentences' key holding a list of {{video_id, caption}} objects")
    captions: dict[str, list[str]] = {}
    for i, sentence in enumerate(sentences):
        for key in ("video_id", "caption"):
            if not isinstance(sentence, dict) or not isinstance(sentence.get(key), str):
                raise AnnotationError(f"{path}: sentences[{i}] has no string {key!r} key")
        captions.setdefault(sentence["video_id"].strip(), []).append(sentence["caption"].strip())
    return captions


def _read_msvd(ann: Path, videos: Path, reading: _Reading) -> None:
    captions_file = ann / MSVD_CAPTIONS
    if not captions_file.is_file():
        for split in SPLITS:
            reading.absent[split] = f"{MSVD_CAPTIONS} not found in {ann}"
        return
    captions = _load_json(captions_file)
    if not isinstance(captions, dict):
        raise AnnotationError(f"{captions_file}: expected an object mapping each video id to its captions")
    for split, name in MSVD_LISTS.items():  # MSVD ships its own val list: no hold-out
        list_file = ann / name
        if not list_file.is_file():
            reading.absent[split] = f"{name} not found in {ann}"
            continue
        ids = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
        for vid in dict.fromkeys(vid for vid in ids if vid):
            texts = captions.get(vid, [])
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise AnnotationError(f"{captions_file}: key {vid!r} must map to a list of caption strings")
            kept = [t.strip() for t in texts if t.strip()]
            reading.bad += _skipped(len(texts), len(kept))
            path = str(videos / f"{vid}.avi")
            reading.rows[split] += [(vid, path, text) for text in kept]


def _skipped(captions: int, kept: int) -> int:
    """Bad rows for one listed video: its empty captions, or 1 if it has no caption entry at all."""
    return max(captions - kept, 1 - kept)


def _read_lsmdc(ann: Path, videos: Path, reading: _Reading, fraction: float, seed: int) -> None:
    index, paths = FileIndex(), {}
    for split, name in LSMDC_FILES.items():
        file = ann / name
        if not file.is_file():
            reading.absent[split] = f"{name} not found in {ann}"
            continue
        # tabs are the only separator: captions hold quotes that csv must not interpret
        for line, cells in _csv_rows(file, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(cells) != 6:
                raise AnnotationError(
                    f"{file} line {line}: expected 6 tab-separated columns "
                    f"(clip id, 4 timestamps, caption), found {len(cells)}"
                )
            clip, text = cells[0].strip(), cells[5].strip()
            if not clip:
                raise AnnotationError(f"{file} line {line}: empty clip id")
            if not text:
                reading.bad += 1
                continue
            if clip not in paths:
                paths[clip] = _lsmdc_path(videos, clip, index)
            reading.rows[split].append((clip, paths[clip], text))
    if "val" in reading.absent and "train" not in reading.absent:
        why = reading.absent.pop("val")
        reading.hold_out_val(fraction, seed, why)


def _lsmdc_path(videos: Path, clip: str, index: FileIndex) -> str:
    """The clip's video, flat in `videos` or in its movie's sub-folder, whichever exists (flat if neither)."""
    flat = videos / f"{clip}.avi"
    movie = videos / clip.rsplit("_", 1)[0]  # strip the trailing _<start>-<end> timestamps
    nested = movie / f"{clip}.avi"
    if index.is_file(flat):
        return str(flat)
    if index.is_file(nested) or index.is_dir(movie):
        return str(nested)
    return str(flat)


def _read_user_manifest(file: Path, base: Path, reading: _Reading, fraction: float, seed: int) -> None:
    seen: dict[str, tuple[str, str]] = {}  # video_id -> (path, split): one id must be one video in one split
    for where, record in _user_records(file):
        raw_path = _text(record.get("video_path"))
        if not raw_path:
            raise AnnotationError(f"{file} {where}: empty video path")
        path = str(_absolute(base / Path(raw_path).expanduser()))  # an absolute raw_path ignores base
        vid = _text(record.get("video_id")) or Path(raw_path).stem
        split = _text(record.get("split")) or "train"
        if split not in SPLITS:
            raise AnnotationError(f"{file} {where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if seen.setdefault(vid, (path, split)) != (path, split):
            raise AnnotationError(
                f"{file} {where}: video_id {vid!r} already names {seen[vid][0]} in split {seen[vid][1]!r}; "
                "give each video its own video_id"
            )
        text = _text(record.get("caption"))
        if not text:
            reading.bad += 1
            continue
        reading.rows[split].append((vid, path, text))
    for split in SPLITS:
        if not reading.rows[split]:
            reading.absent[split] = f"no rows with split {split!r} in {file}"
    if not reading.rows["val"] and reading.rows["train"]:
        reading.hold_out_val(fraction, seed, reading.absent.pop("val"))


def _user_records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, {canonical column: value}) per row, `where` being 'line N' or 'row N' for messages."""
    suffix = file.suffix.lower()
    if suffix == ".csv":
        header, records = _csv_table(file)
        names = _manifest_columns(file, header)
        for line, record in records:
            yield f"line {line}", {key: record[column] for key, column in names.items()}
    elif suffix == ".jsonl":
        for line, obj in _jsonl(file):
            names = _manifest_columns(file, list(obj), f" line {line}")
            yield f"line {line}", {key: obj[column] for key, column in names.items()}
    elif suffix == ".parquet":
        try:
            table = pq.read_table(file)
        except (pa.ArrowException, OSError) as e:
            raise AnnotationError(f"{file}: not a readable Parquet file ({e})") from e
        names = _manifest_columns(file, table.column_names)
        for i, record in enumerate(table.select(list(names.values())).to_pylist(), start=1):
            yield f"row {i}", {key: record[column] for key, column in names.items()}
    else:
        raise ValueError(f"{file}: a manifest must be a .csv, .jsonl or .parquet file")


def _manifest_columns(file: Path, columns: list[str], where: str = "") -> dict[str, str]:
    """canonical name -> the file's column for it."""
    found = {}
    for name, aliases in MANIFEST_COLUMNS.items():
        column = next((alias for alias in aliases if alias in columns), None)
        if column is not None:
            found[name] = column
        elif name in ("video_path", "caption"):
            raise AnnotationError(
                f"{file}{where}: no {name} column (expected one of {', '.join(aliases)}); "
                f"found {', '.join(columns) or 'none'}"
            )
    return found


# -----------------------------------------------------------------------------
# file formats, each error naming the file and where in it


def _csv_rows(path: Path, **fmt: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row; the number is the row's last line, as an editor counts."""
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark that would otherwise glue onto column one
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, **fmt)
            for cells in reader:
                if cells:
                    yield reader.line_num, cells
    except csv.Error as e:
        raise AnnotationError(f"{path} line {reader.line_num}: {e}") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _csv_table(path: Path, required: tuple[str, ...] = ()) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header and an iterator of (line, {column: cell}); a row whose width differs from it is fatal."""
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise AnnotationError(f"{path}: empty file, expected a header line")
    header = [name.strip() for name in first[1]]
    missing = [name for name in required if name not in header]
    if missing:
        raise AnnotationError(f"{path} line {first[0]}: header has no {', '.join(missing)} column")

    def records() -> Iterator[tuple[int, dict]]:
        for line, cells in rows:
            if len(cells) != len(header):
                raise AnnotationError(
                    f"{path} line {line}: {len(cells)} columns, but the header has {len(header)}"
                )
            yield line, dict(zip(header, cells, strict=True))

    return header, records()


def _cell(path: Path, line: int, record: dict[str, str], column: str) -> str:
    value = record[column].strip()
    if not value:
        raise AnnotationError(f"{path} line {line}: empty {column}")
    return value


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"{path} line {line}: invalid JSON: {e.msg}") from e
                if not isinstance(obj, dict):
                    raise AnnotationError(f"{path} line {line}: expected a JSON object")
                yield line, obj
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _absolute(path: str | Path) -> Path:
    # abspath, not resolve: keep the user's symlinked mount points (e.g. /data -> /mnt/nfs) in the paths
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
