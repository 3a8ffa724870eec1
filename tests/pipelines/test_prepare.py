from pathlib import Path

import pytest

from pipelines.manifest import read_manifest
from pipelines.prepare import MissingVideosError, prepare_manifest
from pipelines.readers import read_annotations

FIXTURES = Path(__file__).parent / "fixtures"
MSRVTT_IDS = [f"video{i}" for i in (*range(8), 9, 10, 11)]


def touch(videos: Path, names: list[str]) -> None:
    videos.mkdir(parents=True, exist_ok=True)
    for name in names:
        (videos / name).touch()


def test_prepare_writes_the_manifest_and_summarises_it(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out" / "msrvtt.parquet"
    touch(videos, [f"{v}.mp4" for v in MSRVTT_IDS])
    summary = prepare_manifest("msrvtt-9k", FIXTURES / "msrvtt", videos, out, val_fraction=0.25, seed=3)
    assert summary == {
        "splits": {
            "train": {"videos": 6, "captions": summary["splits"]["train"]["captions"]},
            "val": {"videos": 2, "captions": 17 - summary["splits"]["train"]["captions"]},
            "test": {"videos": 3, "captions": 3},
        },
        "missing_videos": 0,
        "bad_rows": 0,
        "absent_splits": {},
        "manifest": str(out),
    }
    expected = read_annotations("msrvtt-9k", FIXTURES / "msrvtt", videos, val_fraction=0.25, seed=3).table
    assert read_manifest(out).equals(expected)


def test_missing_videos_fail_without_allow_missing(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "m.parquet"
    touch(videos, [f"{v}.mp4" for v in MSRVTT_IDS if v not in ("video3", "video10")])
    with pytest.raises(MissingVideosError, match="2 of 11 videos are missing") as error:
        prepare_manifest("msrvtt-9k", FIXTURES / "msrvtt", videos, out)
    assert str(videos / "video3.mp4") in str(error.value) and str(videos / "video10.mp4") in str(error.value)
    assert "--allow-missing" in str(error.value)
    assert not out.exists()


def test_allow_missing_drops_them_but_counts_the_annotations(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "m.parquet"
    touch(videos, [f"{v}.mp4" for v in MSRVTT_IDS if v not in ("video3", "video10")])
    summary = prepare_manifest(
        "msrvtt-9k", FIXTURES / "msrvtt", videos, out, allow_missing=True, val_fraction=0
    )
    assert summary["missing_videos"] == 2
    assert sorted(summary["missing"]) == [str(videos / "video10.mp4"), str(videos / "video3.mp4")]
    assert summary["splits"]["train"] == {"videos": 8, "captions": 17}  # before dropping
    assert summary["splits"]["test"] == {"videos": 3, "captions": 3}
    table = read_manifest(out)
    assert table.num_rows == 17 - 2 + 3 - 1
    assert not {"video3", "video10"} & set(table["video_id"].to_pylist())


def test_missing_message_lists_twenty_and_counts_the_rest(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,caption\n" + "".join(f"v{i:02d}.mp4,c{i}\n" for i in range(30)))
    touch(tmp_path, ["v00.mp4", "v01.mp4"])
    with pytest.raises(MissingVideosError) as error:
        prepare_manifest("manifest", manifest, None, tmp_path / "m.parquet")
    message = str(error.value)
    assert "28 of 30 videos are missing" in message and "... and 8 more" in message
    assert message.count(".mp4") == 20


def test_all_missing_fails_even_with_allow_missing(tmp_path):
    with pytest.raises(MissingVideosError, match="none of the videos exist"):
        prepare_manifest(
            "msvd", FIXTURES / "msvd", tmp_path / "nowhere", tmp_path / "m.parquet", allow_missing=True
        )


def test_absent_splits_are_left_out_of_the_summary(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, ["0001_American_Beauty_00.00.51.926-00.00.54.129.avi"])
    ann = tmp_path / "lsmdc"
    ann.mkdir()
    (ann / "LSMDC16_challenge_1000_publictect.csv").write_text(
        "\t".join(["0001_American_Beauty_00.00.51.926-00.00.54.129"] + ["00.00.51.926"] * 4 + ["a caption"])
        + "\n"
    )
    summary = prepare_manifest("lsmdc", ann, videos, tmp_path / "m.parquet")
    assert summary["splits"] == {"test": {"videos": 1, "captions": 1}}
    assert set(summary["absent_splits"]) == {"train", "val"}
    assert "LSMDC16_annos_training.csv not found" in summary["absent_splits"]["train"]
