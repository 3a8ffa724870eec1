import math
import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop, v2

from pipelines.transforms import eval_transform, random_resized_crop_box, train_transform


def _noise(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _ramp(frames: int, height: int, width: int) -> np.ndarray:
    """Brightness rising left to right, so a flip shows as a falling ramp."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (frames, height, width, 3)).copy()


@pytest.mark.parametrize("transform", ["train", "eval"])
def test_output_is_channel_first_uint8_and_contiguous(transform):
    frames = _noise(5, 90, 120)
    if transform == "train":
        out = train_transform(frames, 64, np.random.default_rng(0))
    else:
        out = eval_transform(frames, 64)
    assert out.shape == (5, 3, 64, 64) and out.dtype == np.uint8
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous


def test_same_crop_and_flip_for_every_frame():
    one = _noise(1, 100, 140)
    for seed in range(20):
        out = train_transform(np.repeat(one, 4, axis=0), 48, np.random.default_rng(seed))
        for f in range(1, 4):
            np.testing.assert_array_equal(out[f], out[0])
    # Frames that differ by a constant stay that constant apart: same box, same flip, for each.
    base = _noise(1, 100, 140)[0] // 2
    frames = np.stack([base + 10 * f for f in range(4)]).astype(np.uint8)
    for seed in range(20):
        out = train_transform(frames, 48, np.random.default_rng(seed)).astype(int)
        for f in range(1, 4):
            assert np.abs(out[f] - out[0] - 10 * f).max() <= 1


def test_train_transform_is_reproducible_by_seed():
    frames = _noise(3, 80, 100)
    a = train_transform(frames, 56, np.random.default_rng(7))
    b = train_transform(frames, 56, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    others = [train_transform(frames, 56, np.random.default_rng(s)) for s in range(8, 12)]
    assert not any(np.array_equal(a, o) for o in others)


def test_train_transform_is_the_drawn_crop_then_the_drawn_flip():
    frames = _noise(2, 80, 100)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        top, left, h, w = random_resized_crop_box(80, 100, rng)
        flip = rng.random() < 0.5
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        want = v2.functional.resized_crop(video, top, left, h, w, [40, 40], antialias=True)
        want = v2.functional.horizontal_flip(want) if flip else want
        got = train_transform(frames, 40, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, want.numpy())


def test_flip_in_about_half_of_the_seeds():
    frames = _ramp(1, 60, 80)
    flips = 0
    for seed in range(200):
        out = train_transform(frames, 32, np.random.default_rng(seed)).astype(int)
        slope = out[0, 0, :, -1].mean() - out[0, 0, :, 0].mean()
        assert abs(slope) > 10  # every crop keeps a visible ramp
        flips += slope < 0
    assert 70 <= flips <= 130


def test_crop_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(500):
        top, left, h, w = random_resized_crop_box(120, 160, rng)
        assert top >= 0 and left >= 0 and top + h <= 120 and left + w <= 160
        fractions.append(h * w / (120 * 160))
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03
    assert 0.48 <= min(fractions) < 0.6 and 0.9 < max(fractions) <= 1.0


def test_crop_box_falls_back_to_a_centre_crop_like_torchvision():
    # Strips where no box of half the area fits: both fall back to the same centred box.
    for height, width, box in [(1, 1000, (0, 499, 1, 1)), (1000, 10, (493, 0, 13, 10))]:
        ours = random_resized_crop_box(height, width, np.random.default_rng(0))
        theirs = RandomResizedCrop.get_params(torch.zeros(1, height, width), [0.5, 1.0], [3 / 4, 4 / 3])
        assert ours == tuple(theirs) == box


def test_eval_transform_only_centre_crops_frames_of_the_right_short_side():
    frames = _noise(2, 64, 100)
    out = eval_transform(frames, 64)
    np.testing.assert_array_equal(out, frames[:, :, 18:82].transpose(0, 3, 1, 2))
    tall = _noise(2, 90, 64)
    np.testing.assert_array_equal(eval_transform(tall, 64), tall[:, 13:77].transpose(0, 3, 1, 2))


def test_eval_transform_resizes_the_short_side_then_crops():
    flat = np.zeros((3, 120, 200, 3), np.uint8)
    flat[..., 0], flat[..., 1], flat[..., 2] = 200, 30, 7
    out = eval_transform(flat, 48)
    assert (out[:, 0] == 200).all() and (out[:, 1] == 30).all() and (out[:, 2] == 7).all()
    # Left half black, right half white (200 px wide, 120 high): after 120 -> 48 the frame is 80 wide
    # and the centre crop keeps columns 16..63, whose middle (24 of 48) is the edge.
    halves = np.zeros((1, 120, 200, 3), np.uint8)
    halves[:, :, 100:] = 255
    out = eval_transform(halves, 48)[0, 0]
    assert (out[:, :22] == 0).all() and (out[:, 26:] == 255).all()
    small = eval_transform(_noise(1, 20, 30), 40)  # upscales
    assert small.shape == (1, 3, 40, 40)


def test_eval_transform_matches_torchvision_resize_and_centre_crop():
    frames = _noise(2, 75, 130)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    resize = v2.Resize(32, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    want = v2.Compose([resize, v2.CenterCrop(32)])
    np.testing.assert_array_equal(eval_transform(frames, 32), want(video).numpy())


def test_read_only_input_is_fine():
    frames = _noise(2, 40, 40)
    frames.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_transform(frames, 32, np.random.default_rng(0))
        eval_transform(frames, 32)


def test_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        eval_transform(np.zeros((2, 40, 40, 3), np.float32), 32)
    with pytest.raises(ValueError, match="shape"):
        eval_transform(np.zeros((2, 3, 40, 40), np.uint8), 32)
    with pytest.raises(ValueError, match="shape"):
        train_transform(np.zeros((40, 40, 3), np.uint8), 32, np.random.default_rng(0))


def test_fraction_bounds_are_the_spec():
    # scale 0.5-1.0 of the area: a box of exactly half the area can appear, never less (up to rounding).
    rng = np.random.default_rng(1)
    smallest = min(math.prod(random_resized_crop_box(224, 224, rng)[2:]) for _ in range(2000)) / 224**2
    assert 0.49 < smallest < 0.52
