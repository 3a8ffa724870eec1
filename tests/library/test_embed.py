"""The embedding job on a real local Ray, real mp4s and a real checkpoint: a library searched with FAISS."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from library import store
from library.embed import EmbedConfig, LibraryMismatch, _spans, embed_library, iter_videos
from library.search import Library
from library.source import resolve
from model import ModelConfig, build_model
from orchestrator.config import RunConfig, TrainConfig
from orchestrator.config_io import dump_config
from orchestrator.training import checkpoint
from orchestrator.training.step import build_optimisation
from pipelines.config import DataConfig
from pipelines.synth import render, write_video
from pipelines.synthetic import VideoSpec


def _checkpoint(folder, manifest, seed=3):
    """A checkpoint folder as training writes it: a seeded tiny model, its optimiser, its run config."""
    torch.manual_seed(seed)
    run = RunConfig(
        name="lib",
        model=ModelConfig(name="tiny", frames_per_group=6),
        data=DataConfig(manifest=str(manifest), image_size=64),
        train=TrainConfig(batch_size=4),
    )
    model = build_model(run.model)
    checkpoint.save(
        folder, model, build_optimisation(model, run.train, 10), checkpoint.TrainState(), dump_config(run)
    )
    return run


@pytest.mark.slow
def test_incremental_runs_embed_only_what_is_new_or_changed(ray_local, synth, tmp_path):
    _checkpoint(tmp_path / "ckpt", synth)
    model = resolve(str(tmp_path / "ckpt"))
    videos = tmp_path / "videos"
    shutil.copytree(synth.parent / "videos", videos)
    (videos / "corrupt.mp4").write_bytes(os.urandom(4000))  # a bad video: reported, skipped
    first = embed_library(model, videos, tmp_path / "lib", EmbedConfig(batch_size=8))
    assert (first["counts"]["videos"], first["counts"]["rows"], first["counts"]["bad_videos"]) == (25, 24, 1)
    assert [b["video"] for b in first["last_job"]["bad"]] == [str(videos / "corrupt.mp4")]

    again = embed_library(model, videos, tmp_path / "lib", EmbedConfig(batch_size=8))
    assert again["counts"]["embedded_now"] == 0

    shutil.copy(videos / "synth-0000.mp4", videos / "added.mp4")
    st = (videos / "synth-0001.mp4").stat()
    os.utime(videos / "synth-0001.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "changed"
    third = embed_library(model, videos, tmp_path / "lib", EmbedConfig(batch_size=8))
    assert third["counts"]["embedded_now"] == 2
    assert third["counts"]["rows"] == 25  # the changed video's old row is superseded, not doubled
    lib = Library.open(tmp_path / "lib")
    top = lib.search_video(videos / "added.mp4", k=2)[0]
    assert {h.video_id for h in top} == {"added.mp4", "synth-0000.mp4"}  # the same frames
    assert top[0].score == pytest.approx(1.0, abs=1e-4)

    _checkpoint(tmp_path / "other", synth, seed=4)
    with pytest.raises(LibraryMismatch, match="embedded by another model"):
        embed_library(resolve(str(tmp_path / "other")), videos, tmp_path / "lib", EmbedConfig())
    rebuilt = embed_library(
        resolve(str(tmp_path / "other")), videos, tmp_path / "lib", EmbedConfig(), rebuild=True
    )
    assert rebuilt["counts"]["embedded_now"] == 26


@pytest.mark.slow
def test_a_long_videos_parts_are_found_in_their_own_time_range(ray_local, trained, tmp_path):
    _, ckpt = trained
    specs = [VideoSpec("red", "circle", "left", "up"), VideoSpec("blue", "square", "right", "down"),
             VideoSpec("yellow", "triangle", "down", "left")]  # fmt: skip
    parts = [render(spec, 24, 64) for spec in specs]  # 3 distinct parts of 2 s at 12 fps
    write_video(tmp_path / "long" / "long.mp4", np.concatenate(parts), 12)
    for i, frames in enumerate(parts):
        write_video(tmp_path / "parts" / f"part{i}.mp4", frames, 12)
    config = EmbedConfig(segment_seconds=2.0)
    manifest = embed_library(resolve(str(ckpt)), tmp_path / "long", tmp_path / "lib", config)
    assert manifest["counts"]["rows"] == 3
    lib = Library.open(tmp_path / "lib")
    for i, spec in enumerate(specs):
        by_video = lib.search_video(tmp_path / "parts" / f"part{i}.mp4", k=3)[0][0]
        for best in (lib.search(spec.caption, k=3)[0][0], by_video):
            assert best.video_id == "long.mp4"
            assert (best.start_s, best.end_s) == pytest.approx((2.0 * i, 2.0 * i + 2.0)), (i, spec.caption)


def test_a_listing_streams_in_chunks_with_each_video_once(synth, tmp_path):
    chunks = list(iter_videos(synth, "test", chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 2]  # 6 test videos, each with two captions in the manifest
    listed = pa.concat_tables(chunks)
    assert listed["video_path"].to_pylist() == sorted(set(listed["video_path"].to_pylist()))
    assert all(size > 0 for size in listed["size"].to_pylist())
    nested = tmp_path / "videos" / "b"
    nested.mkdir(parents=True)
    for name in ("b/2.mp4", "a.MP4", "b/1.webm", "notes.txt"):
        (tmp_path / "videos" / name).write_bytes(b"x")
    folder = pa.concat_tables(iter_videos(tmp_path / "videos", chunk_rows=2))
    assert folder["video_id"].to_pylist() == ["a.MP4", "b/1.webm", "b/2.mp4"]


def test_windows_cover_a_long_video_and_leave_a_short_one_whole():
    assert _spans(5.0, None, None) == [(0.0, 5.0)]
    assert _spans(1.5, 2.0, None) == [(0.0, 1.5)]
    assert _spans(6.0, 2.0, None) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert _spans(5.0, 2.0, 1.0) == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
    assert _spans(5.0, 2.0, None)[-1] == (3.0, 5.0)  # the tail ends with the video


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="dtype='bfloat16' is invalid; allowed: float32, float16"):
        EmbedConfig(dtype="bfloat16")
    with pytest.raises(ValueError, match="stride_seconds"):
        EmbedConfig(stride_seconds=1.0)


def test_shards_written_later_supersede_earlier_rows(tmp_path):
    schema = store.schema(2, "float32")
    row = {"video_id": "a", "video_path": "/v/a.mp4", "size": 1, "mtime_ns": 1, "start_s": 0.0, "end_s": 1.0,
           "embedding": [1.0, 0.0], "error": ""}  # fmt: skip
    store.write_shard(
        tmp_path, pa.Table.from_pylist([row, row | {"video_id": "b", "video_path": "/v/b.mp4"}], schema)
    )
    store.write_shard(
        tmp_path, pa.Table.from_pylist([row | {"mtime_ns": 2, "embedding": [0.0, 1.0]}], schema)
    )
    rows = store.read_rows(tmp_path)
    assert rows["video_path"].to_pylist() == ["/v/b.mp4", "/v/a.mp4"]
    assert rows["mtime_ns"].to_pylist() == [1, 2]
    assert store.identity_keys(tmp_path).to_pylist() == ["/v/b.mp4\x001\x001", "/v/a.mp4\x001\x002"]
    assert store.counts(tmp_path) == {"videos": 2, "rows": 2, "bad_videos": 0}


@pytest.mark.slow
def test_an_approximate_index_is_measured_saved_and_used_while_it_matches(ray_local, synth, tmp_path):
    import faiss

    _checkpoint(tmp_path / "ckpt", synth)
    model = resolve(str(tmp_path / "ckpt"))
    config = EmbedConfig(index="approximate", index_factory="HNSW8,Flat")
    manifest = embed_library(model, synth, tmp_path / "lib", config)
    built = manifest["index"]
    assert built["factory"] == "HNSW8,Flat" and built["rows"] == 24
    assert built["recall_at_10"] >= 0.95  # a graph over 24 vectors finds them all
    lib = Library.open(tmp_path / "lib")
    assert isinstance(lib.index, faiss.IndexHNSWFlat)
    exact = faiss.IndexFlatIP(lib.vectors.shape[1])
    exact.add(lib.vectors)
    _, want = exact.search(lib.vectors[:5], 3)
    got = [[h.video_path for h in per] for per in lib.search_vectors(lib.vectors[:5], 3)]
    assert got == [[lib.records["video_path"][int(r)].as_py() for r in row] for row in want]

    (tmp_path / "extra").mkdir()
    shutil.copy(synth.parent / "videos" / "synth-0000.mp4", tmp_path / "extra" / "extra.mp4")
    embed_library(model, tmp_path / "extra", tmp_path / "lib2", EmbedConfig())  # another library
    (tmp_path / "lib" / "shards" / "shard-00001.parquet").write_bytes(
        (tmp_path / "lib2" / "shards" / "shard-00000.parquet").read_bytes()
    )  # the library changed after its index was built: searched exactly again
    assert isinstance(Library.open(tmp_path / "lib").index, faiss.IndexFlatIP)
