"""The preprocessing cache: built once, reused across runs, rebuilt when the source or a parameter changes."""

import os

import numpy as np
import pytest

from pipelines.cache import CacheReader, build_cache, cache_key
from pipelines.config import DataConfig
from pipelines.dataset import eval_dataset, prepare_data, train_dataset
from pipelines.manifest import read_manifest
from pipelines.synth import corrupt_copies, write_synthetic_dataset
from pipelines.video import decode_frames

T = 6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), videos=8, seed=5, frames=36, size=64, fps=12
    )


def config(manifest, cache_dir, **overrides):
    options = dict(image_size=64, cache_short_side=64, decode_batch_size=4, cache_fps=4.0) | overrides
    return DataConfig(manifest=str(manifest), cache_dir=str(cache_dir), **options)


def videos_of(manifest):
    return sorted(set(read_manifest(manifest)["video_path"].to_pylist()))


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_miss_then_hit_and_frames_at_the_reduced_rate(ray_local, synthetic, tmp_path, fmt):
    cfg = config(synthetic, tmp_path, cache_format=fmt)
    first = build_cache(videos_of(synthetic), cfg)
    assert not first.hit and first.videos == 8 and first.bad == []
    second = build_cache(videos_of(synthetic), cfg)
    assert second.hit and second.path == first.path

    reader = CacheReader(first.path)
    video = videos_of(synthetic)[0]
    assert reader.num_frames(video) == 12  # 36 frames at 12 fps, kept at 4 fps
    cached = reader.read(video, np.array([0, 5, 11]))
    original = decode_frames(video, [0, 15, 33])
    assert cached.shape == original.shape == (3, 64, 64, 3)
    tolerance = 6 if fmt == "jpeg" else 0
    assert np.abs(cached.astype(int) - original.astype(int)).mean() <= tolerance


def test_a_changed_video_or_parameter_gives_a_new_key(synthetic, tmp_path):
    videos = videos_of(synthetic)
    key = cache_key(videos, config(synthetic, tmp_path))
    assert cache_key(videos, config(synthetic, tmp_path)) == key
    assert cache_key(videos, config(synthetic, tmp_path, cache_fps=2.0)) != key
    assert cache_key(videos, config(synthetic, tmp_path, cache_format="raw")) != key
    st = os.stat(videos[0])
    os.utime(videos[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert cache_key(videos, config(synthetic, tmp_path)) != key
    finally:
        os.utime(videos[0], ns=(st.st_atime_ns, st.st_mtime_ns))


def test_rebuilt_after_a_video_changes(ray_local, synthetic, tmp_path):
    cfg = config(synthetic, tmp_path)
    videos = videos_of(synthetic)
    first = build_cache(videos, cfg)
    st = os.stat(videos[1])
    os.utime(videos[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        again = build_cache(videos, cfg)
    finally:
        os.utime(videos[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not again.hit and again.path != first.path


def test_bad_videos_are_recorded_in_the_index(ray_local, synthetic, tmp_path):
    bad = corrupt_copies(synthetic.parent, ("empty", "garbage"))
    info = build_cache(videos_of(synthetic) + [str(p) for p in bad.values()], config(synthetic, tmp_path))
    assert sorted(b["video"] for b in info.bad) == sorted(str(p) for p in bad.values())
    assert all(b["error"] for b in info.bad)


def test_training_and_evaluation_read_from_the_cache(ray_local, synthetic, tmp_path):
    cfg = config(synthetic, tmp_path)
    data = prepare_data(cfg, T)
    assert data.cache is not None
    rows = train_dataset(data, cfg, T).take_all()
    assert len(rows) == len(data.splits["train"].captions)
    assert rows[0]["frames"].shape == (T, 3, 64, 64)
    videos = eval_dataset(data, cfg, T, "test").take_all()
    assert len(videos) == len(data.splits["test"].videos)
    assert videos[0]["frames"].shape == (2 * T, 3, 64, 64)
