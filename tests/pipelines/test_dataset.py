"""The Ray Data pipeline on a real local Ray cluster, over real mp4 files decoded by decord."""

import numpy as np
import pyarrow as pa
import pytest

from model import tokenize
from pipelines.config import DataConfig
from pipelines.dataset import TooManyBadVideos, eval_dataset, prepare_data, train_dataset
from pipelines.decode import INFO_COLUMNS
from pipelines.manifest import SCHEMA, read_manifest, write_manifest
from pipelines.synth import corrupt_copies, write_synthetic_dataset
from pipelines.video import VideoInfo, probe

T = 6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(out, videos=16, seed=3, frames=24, size=64)


@pytest.fixture(scope="module")
def with_bad_videos(synthetic, tmp_path_factory):
    """The synthetic manifest plus one training caption per kind of bad file."""
    bad = corrupt_copies(synthetic.parent, ("empty", "garbage", "truncated"))
    bad["missing"] = synthetic.parent / "videos" / "not-there.mp4"
    table = read_manifest(synthetic)
    extra = pa.table(
        {
            "video_id": [f"bad-{k}" for k in bad],
            "video_path": [str(p) for p in bad.values()],
            "caption": ["a broken video"] * len(bad),
            "split": ["train"] * len(bad),
        },
        schema=SCHEMA,
    )
    path = tmp_path_factory.mktemp("bad") / "manifest.parquet"
    write_manifest(pa.concat_tables([table, extra]), path)
    return path, bad


def config(manifest, **overrides):
    return DataConfig(
        manifest=str(manifest), image_size=64, cache_short_side=64, decode_batch_size=4, **overrides
    )


def test_bad_videos_are_dropped_counted_and_reported(ray_local, with_bad_videos):
    manifest, bad = with_bad_videos
    data = prepare_data(config(manifest, max_bad_fraction=0.5), T)
    reported = {b["video"]: b["error"] for b in data.report.bad}
    assert set(reported) == {str(p) for p in bad.values()}
    assert reported[str(bad["missing"])] == "missing file"
    assert reported[str(bad["empty"])] == "empty file"
    assert all(reported.values())
    assert data.report.total == 16 + len(bad)
    train_paths = set(data.splits["train"].captions["video_path"].to_pylist())
    assert not train_paths & set(reported)


def test_too_many_bad_videos_fail_with_a_clear_message(ray_local, with_bad_videos):
    manifest, bad = with_bad_videos
    with pytest.raises(TooManyBadVideos, match=r"5 of 21 videos .* data.max_bad_fraction=0.01"):
        prepare_data(config(manifest), T)


@pytest.fixture(scope="module")
def prepared(ray_local, synthetic):
    return prepare_data(config(synthetic), T)


def test_splits_follow_the_manifest(prepared, synthetic):
    table = read_manifest(synthetic)
    for name, split in prepared.splits.items():
        rows = table.filter(pa.compute.equal(table["split"], name))
        assert len(split.captions) == len(rows)
        assert len(split.videos) == len(set(rows["video_path"].to_pylist()))
        assert split.videos["video_index"].to_pylist() == list(range(len(split.videos)))
    assert prepared.report.bad == []


def test_splits_carry_the_scanned_video_info(prepared):
    """The decode tasks open each file once, with the size the scan found, instead of reading it again."""
    videos = prepared.splits["test"].videos.to_pylist()
    for row in videos[:3]:
        assert VideoInfo(*(row[k] for k in INFO_COLUMNS)) == probe(row["video_path"])
    captions = prepared.splits["train"].captions
    assert set(INFO_COLUMNS) <= set(captions.column_names)


def test_training_rows_shapes_and_a_fresh_order_each_epoch(prepared):
    ds = train_dataset(prepared, config("unused"), T)
    epochs = [ds.take_all() for _ in range(2)]
    n_captions = len(prepared.splits["train"].captions)
    for rows in epochs:
        assert len(rows) == n_captions
        first = rows[0]
        assert first["frames"].shape == (T, 3, 64, 64) and first["frames"].dtype == np.uint8
        assert first["tokens"].shape == (77,) and first["tokens"].dtype == np.int32
        # Each caption's tokens, tokenized once on the driver, not by the decoding tasks.
        captions = prepared.splits["train"].captions["caption"].to_pylist()
        assert sorted(r["tokens"].tolist() for r in rows) == sorted(tokenize(captions).tolist())
    order = [[r["video_index"] for r in rows] for rows in epochs]
    assert sorted(order[0]) == sorted(order[1])
    assert order[0] != order[1]


def test_evaluation_rows_are_videos_with_two_fixed_groups(prepared):
    ds = eval_dataset(prepared, config("unused"), T, "test")
    runs = [sorted(ds.take_all(), key=lambda r: r["video_index"]) for _ in range(2)]
    assert [r["video_index"] for r in runs[0]] == list(range(len(prepared.splits["test"].videos)))
    assert runs[0][0]["frames"].shape == (2 * T, 3, 64, 64)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a["frames"], b["frames"])


def test_shards_for_two_trainers_are_disjoint_and_complete(prepared):
    shards = train_dataset(prepared, config("unused"), T).streaming_split(2, equal=False)
    import threading

    seen = [[], []]

    def consume(i):
        for batch in shards[i].iter_batches(batch_size=4):
            seen[i].extend(batch["video_index"].tolist())

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert seen[0] and seen[1]
    assert sorted(seen[0] + seen[1]) == sorted(prepared.splits["train"].captions["video_index"].to_pylist())


def test_a_video_that_breaks_after_the_scan_is_dropped_not_fatal(ray_local, synthetic, tmp_path):
    data = prepare_data(config(synthetic), T)
    victim = data.splits["test"].videos["video_path"][0].as_py()
    moved = tmp_path / "moved.mp4"
    import shutil

    shutil.move(victim, moved)
    try:
        rows = eval_dataset(data, config("unused"), T, "test").take_all()
    finally:
        shutil.move(moved, victim)
    assert len(rows) == len(data.splits["test"].videos) - 1
