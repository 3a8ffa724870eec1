"""A restarted run reuses the scan's verdicts: only new or changed videos are decoded again."""

import os
import shutil
from dataclasses import replace

import pyarrow as pa

from pipelines import dataset, scan_memory
from pipelines.config import DataConfig
from pipelines.manifest import read_manifest, write_manifest


def test_a_second_preparation_scans_only_what_changed(ray_local, synth, tmp_path, monkeypatch):
    shutil.copytree(synth.parent / "videos", tmp_path / "videos")
    table = read_manifest(synth)
    moved = [str(tmp_path / "videos" / os.path.basename(p)) for p in table["video_path"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("video_path"), "video_path", pa.array(moved))
    write_manifest(table, tmp_path / "m.parquet")
    (tmp_path / "videos" / "synth-0003.mp4").write_bytes(b"not a video")  # bad from the start
    config = DataConfig(
        manifest=str(tmp_path / "m.parquet"), image_size=64, cache_short_side=64, max_bad_fraction=0.5
    )

    scanned = []
    real_scan = dataset.scan_videos
    monkeypatch.setattr(dataset, "scan_videos", lambda v, *a: scanned.append(list(v)) or real_scan(v, *a))
    first = dataset.prepare_data(config, 6)
    assert len(scanned[0]) == 24 and scan_memory.memory_path(config.manifest).is_file()
    again = dataset.prepare_data(config, 6)
    assert len(scanned) == 1, "nothing changed: nothing scanned"
    assert again.report == first.report and again.splits["test"].videos == first.splits["test"].videos

    changed = tmp_path / "videos" / "synth-0005.mp4"
    changed.write_bytes(changed.read_bytes()[:2000])  # cut short
    third = dataset.prepare_data(config, 6)
    assert scanned[1] == [str(changed)]
    assert {b["video"] for b in third.report.bad} == {str(changed), str(tmp_path / "videos/synth-0003.mp4")}

    dataset.prepare_data(replace(config, eval_groups=3), 6)
    assert len(scanned[2]) == 24, "other sampling settings: a scan of its own"
