import numpy as np
import pytest

from pipelines.sampling import frame_indices


def test_evaluation_two_groups_at_thirds_of_each_segment():
    # 60 frames, 6 segments of 10: group 0 at 1/3 (frame 3 of each), group 1 at 2/3 (frame 6 of each).
    idx = frame_indices(60, 6, groups=2)
    assert idx.tolist() == [3, 13, 23, 33, 43, 53, 6, 16, 26, 36, 46, 56]


def test_training_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = frame_indices(60, 6, rng=rng)
        assert len(idx) == 6
        assert all(10 * s <= i < 10 * (s + 1) for s, i in enumerate(idx))
        seen.update(idx.tolist())
    assert len(seen) == 60  # every frame of every segment gets drawn


def test_uneven_segments_stay_inside_the_video():
    for n in range(6, 40):
        for idx in (frame_indices(n, 6, groups=2), frame_indices(n, 6, rng=np.random.default_rng(n))):
            assert idx.min() >= 0 and idx.max() < n
            group = idx[:6]
            assert (np.diff(group) > 0).all()  # one frame per segment, in order


def test_short_video_repeats_its_last_frame():
    assert frame_indices(4, 6, groups=2).tolist() == [0, 1, 2, 3, 3, 3] * 2


def test_empty_video_is_an_error():
    with pytest.raises(ValueError, match="at least one frame"):
        frame_indices(0, 6)
