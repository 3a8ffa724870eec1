from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.manifest import SCHEMA, read_manifest
from pipelines.synth import (
    MANIFEST_NAME,
    corrupt_copies,
    paraphrase,
    video_encoder,
    write_synthetic_dataset,
    write_video,
)
from pipelines.synthetic import COLOURS, DIRECTIONS, SHAPES, random_specs, render
from pipelines.video import VideoError, decode_frames, probe

VIDEOS, SEED, FRAMES, SIZE = 8, 3, 24, 64


def _write(out_dir: Path, seed: int = SEED) -> Path:
    return write_synthetic_dataset(out_dir, VIDEOS, seed, frames=FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synth")
    return out_dir, _write(out_dir)


@pytest.fixture(scope="module")
def rows(dataset):
    return read_manifest(dataset[1]).to_pylist()


def test_videos_are_h264_where_pyav_has_libx264(dataset):
    expected = "h264" if "libx264" in av.codecs_available else "mpeg4"
    assert video_encoder() == ("libx264" if expected == "h264" else "mpeg4")
    with av.open(str(dataset[0] / "videos" / "synth-0000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == expected and stream.codec_context.pix_fmt == "yuv420p"


def test_manifest_path_and_schema(dataset):
    out_dir, manifest = dataset
    assert manifest == out_dir.resolve() / MANIFEST_NAME
    table = pq.read_table(manifest)
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table.num_rows == 2 * VIDEOS


def test_two_captions_per_video_naming_colour_shape_and_directions(rows):
    specs = random_specs(VIDEOS, SEED)
    for i, spec in enumerate(specs):
        mine = [r for r in rows if r["video_id"] == f"synth-{i:04d}"]
        assert [r["caption"] for r in mine] == [spec.caption, paraphrase(spec)]
        assert len({r["video_path"] for r in mine}) == 1 and len({r["split"] for r in mine}) == 1
    for row in rows:
        words = row["caption"].replace(",", "").split()
        assert sum(w in COLOURS for w in words) == 1 and sum(w in SHAPES for w in words) == 1
        directions = [w for w in words if w in DIRECTIONS]
        assert len(directions) == 2 and directions[0] != directions[1]
    assert rows[1]["caption"].startswith("the ") and " goes " in rows[1]["caption"]
    assert len({r["caption"] for r in rows}) == 2 * VIDEOS  # distinct videos, distinct captions


def test_splits_take_whole_videos(rows):
    split_of = {r["video_id"]: r["split"] for r in rows}
    counts = {s: list(split_of.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 1, "test": 2}  # 8 * 0.125 = 1 val, 8 * 0.25 = 2 test


def test_every_file_holds_its_captions_video(rows):
    specs = random_specs(VIDEOS, SEED)
    for row in rows[::2]:
        path = Path(row["video_path"])
        assert path.is_absolute() and probe(path).num_frames == FRAMES
        spec = specs[int(row["video_id"].split("-")[1])]
        frames = decode_frames(path, range(FRAMES))
        assert np.abs(frames.astype(int) - render(spec, FRAMES, SIZE)).mean() < 12


def test_same_seed_same_dataset(dataset, tmp_path):
    out_a, manifest_a = dataset
    manifest_b = _write(tmp_path)
    a, b = read_manifest(manifest_a).to_pylist(), read_manifest(manifest_b).to_pylist()
    relative = [Path(r.pop("video_path")).relative_to(out_a.resolve()) for r in a]
    assert relative == [Path(r.pop("video_path")).relative_to(tmp_path) for r in b]
    assert a == b
    for path in sorted({out_a.resolve() / p for p in relative}):
        twin = tmp_path / path.relative_to(out_a.resolve())
        assert path.read_bytes() == twin.read_bytes()
        np.testing.assert_array_equal(decode_frames(path, range(FRAMES)), decode_frames(twin, range(FRAMES)))


def test_other_seed_other_dataset(rows, tmp_path):
    other = read_manifest(_write(tmp_path, seed=SEED + 1)).to_pylist()
    assert [r["caption"] for r in other] != [r["caption"] for r in rows]


def test_mpeg4_fallback_decodes_and_is_deterministic(tmp_path):
    frames = render(random_specs(1, 0)[0], 12, 64)
    a = write_video(tmp_path / "a.mp4", frames, 12, codec="mpeg4")
    b = write_video(tmp_path / "b.mp4", frames, 12, codec="mpeg4")
    assert a.read_bytes() == b.read_bytes()
    assert np.abs(decode_frames(a, range(12)).astype(int) - frames).mean() < 12


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="144 distinct"):
        write_synthetic_dataset(tmp_path, 145, 0)
    with pytest.raises(ValueError, match="decord"):
        write_synthetic_dataset(tmp_path, 4, 0, size=48)
    with pytest.raises(ValueError, match="none for training"):
        write_synthetic_dataset(tmp_path, 2, 0, test_fraction=0.5, val_fraction=0.25)
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_corrupt_copies_beside_a_dataset_video(dataset):
    out_dir, _ = dataset
    made = corrupt_copies(out_dir, ("empty", "garbage", "truncated", "damaged"))
    assert set(made) == {"empty", "garbage", "truncated_50", "truncated_10", "damaged"}
    good = out_dir / "videos" / "synth-0000.mp4"
    size = good.stat().st_size
    assert all(p.parent == good.parent for p in made.values())
    assert made["empty"].stat().st_size == 0
    assert made["garbage"].stat().st_size == size == made["damaged"].stat().st_size
    assert made["truncated_50"].stat().st_size == size // 2
    assert made["truncated_10"].stat().st_size == size // 10
    for path in made.values():
        with pytest.raises(VideoError):
            probe(path)
    # Run again: the corrupt files are not taken for the good one.
    assert corrupt_copies(out_dir, ("empty",)) == {"empty": made["empty"]}


def test_corrupt_copies_without_a_dataset_write_a_good_video(tmp_path):
    made = corrupt_copies(tmp_path)
    assert set(made) == {"empty", "garbage", "truncated_50", "truncated_10"}
    assert probe(tmp_path / "good.mp4").num_frames == 24
    with pytest.raises(ValueError, match="unknown"):
        corrupt_copies(tmp_path, ("empty", "bitrot"))
