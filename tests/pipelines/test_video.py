import pickle
import re

import numpy as np
import pytest

from pipelines.synth import corrupt_copies, write_video
from pipelines.synthetic import VideoSpec, render
from pipelines.video import (
    DECORD_BAD_WIDTHS,
    VideoError,
    VideoInfo,
    decode_frames,
    open_video,
    probe,
    resized_size,
)

SPEC = VideoSpec("red", "square", "left", "up")
FRAMES, SIZE, FPS = 24, 64, 12


@pytest.fixture(scope="module")
def rendered():
    return render(SPEC, FRAMES, SIZE)


@pytest.fixture(scope="module")
def video(tmp_path_factory, rendered):
    return write_video(tmp_path_factory.mktemp("video") / "good.mp4", rendered, FPS)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, video):
    kinds = ("empty", "garbage", "truncated", "damaged")
    return corrupt_copies(tmp_path_factory.mktemp("bad"), kinds, source=video)


def _centroids(frames: np.ndarray) -> np.ndarray:
    """(F, 2) x, y of the red pixels in each frame."""
    red = (frames[..., 0] > 150) & (frames[..., 1] < 100) & (frames[..., 2] < 100)
    assert red.any(axis=(1, 2)).all()
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    count = red.sum(axis=(1, 2))
    return np.stack([(red * xs).sum(axis=(1, 2)) / count, (red * ys).sum(axis=(1, 2)) / count], axis=1)


def test_probe_reads_count_rate_and_size(video):
    assert probe(video) == VideoInfo(num_frames=FRAMES, fps=FPS, width=SIZE, height=SIZE)


def test_decoded_frames_match_the_rendered_ones(video, rendered):
    frames = decode_frames(video, range(FRAMES))
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
    error = np.abs(frames.astype(int) - rendered).mean(axis=(1, 2, 3))
    assert error.max() < 12  # lossy codec, small error
    # The square moves left during the first half, then up (a quarter of the frame, 16 px, each way):
    # the decoded centroid follows the rendered one.
    got, want = _centroids(frames), _centroids(rendered)
    np.testing.assert_allclose(got, want, atol=1.0)
    half = FRAMES // 2
    assert got[half, 0] < got[0, 0] - 14 and abs(got[half, 1] - got[0, 1]) < 2
    assert got[-1, 1] < got[half, 1] - 14 and abs(got[-1, 0] - got[half, 0]) < 2


def test_indices_in_any_order_with_repeats_and_negative(video):
    all_frames = decode_frames(video, range(FRAMES))
    picked = decode_frames(video, np.array([17, 3, 17, 0, -1]))
    np.testing.assert_array_equal(picked, all_frames[[17, 3, 17, 0, FRAMES - 1]])


def test_bad_indices(video):
    with pytest.raises(IndexError, match="out of range"):
        decode_frames(video, [0, FRAMES])
    with pytest.raises(ValueError, match="at least one"):
        decode_frames(video, [])


def test_resized_size_keeps_aspect_and_even_sizes():
    assert resized_size(320, 240, 224) == (298, 224)
    assert resized_size(240, 320, 224) == (224, 298)
    assert resized_size(1920, 1080, 224) == (398, 224)
    assert resized_size(64, 64, 32) == (32, 32)
    assert resized_size(100, 100, 33) == (34, 34)  # odd short side rounds up to even
    # 96x64 at short side 32 would be 48 wide, which decord cannot return: one step wider.
    assert 48 in DECORD_BAD_WIDTHS and resized_size(96, 64, 32) == (50, 32)


def test_resized_decode(video, rendered):
    small = decode_frames(video, [0, 12, 23], short_side=32)
    assert small.shape == (3, 32, 32, 3) and small.dtype == np.uint8
    downsampled = rendered[[0, 12, 23]].reshape(3, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(small.astype(float) - downsampled).mean() < 12
    assert decode_frames(video, [5], short_side=96).shape == (1, 96, 96, 3)  # upscales too
    np.testing.assert_array_equal(decode_frames(video, [5], short_side=SIZE), decode_frames(video, [5]))
    with_info = decode_frames(video, [0, 12, 23], short_side=32, info=probe(video))
    np.testing.assert_array_equal(with_info, small)


def test_resized_decode_of_a_wide_video(tmp_path):
    wide = write_video(tmp_path / "wide.mp4", np.full((4, 64, 128, 3), 90, np.uint8), FPS)
    assert probe(wide) == VideoInfo(num_frames=4, fps=FPS, width=128, height=64)
    frames = decode_frames(wide, [0, 3], short_side=32)
    assert frames.shape == (2, 32, 64, 3)
    assert np.abs(frames.astype(int) - 90).max() <= 3


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoError, match="missing file") as info:
        probe(tmp_path / "nope.mp4")
    assert info.value.path == str(tmp_path / "nope.mp4") and info.value.reason == "missing file"
    with pytest.raises(VideoError, match="not a regular file"):
        probe(tmp_path)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "^empty file$"),
        ("garbage", "^cannot decode: "),
        ("truncated_50", "^cannot decode: "),  # the moov box (index) sits at the end: the open fails
        ("truncated_10", "^cannot decode: "),
        ("damaged", f"^cannot decode frame {FRAMES - 1} of {FRAMES}: "),  # opens; only the last frame fails
    ],
)
def test_bad_files_raise_video_error(bad_files, kind, reason):
    with pytest.raises(VideoError) as info:
        probe(bad_files[kind])
    assert info.value.path == str(bad_files[kind])
    assert re.search(reason, info.value.reason), info.value.reason
    assert "[" not in info.value.reason.split(":")[0]  # decord's timestamps are stripped
    with pytest.raises(VideoError):
        decode_frames(bad_files[kind], range(FRAMES))
    if kind != "damaged":  # the size comes from the header, so a bad header fails already at the open
        with pytest.raises(VideoError):
            open_video(bad_files[kind], short_side=32)


def test_damaged_file_opens_without_error(bad_files):
    """What the frame read in `probe` is for: opening alone does not notice damaged frame data."""
    import decord

    assert len(decord.VideoReader(str(bad_files["damaged"]), ctx=decord.cpu(0), num_threads=1)) == FRAMES


def test_video_error_survives_pickling(tmp_path):
    error = VideoError(tmp_path / "x.mp4", "empty file")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_width_decord_cannot_return_is_a_clear_error(tmp_path):
    narrow = write_video(tmp_path / "narrow.mp4", np.zeros((2, 64, 48, 3), np.uint8), FPS)
    with pytest.raises(VideoError, match="cannot return frames of this width"):
        probe(narrow)


def test_open_video_reads_many_times_from_one_open(video, rendered):
    opened = open_video(video, short_side=32)
    assert (opened.num_frames, opened.fps, opened.size) == (FRAMES, FPS, (32, 32))
    np.testing.assert_array_equal(opened.read([3, 20]), decode_frames(video, [3, 20], short_side=32))
    assert opened.read(np.arange(0, FRAMES, 4)).shape == (6, 32, 32, 3)
    native = open_video(video)
    assert native.size is None and native.read([-1]).shape == (1, SIZE, SIZE, 3)
    with pytest.raises(IndexError):
        native.read([FRAMES])
    with pytest.raises(VideoError, match="missing file"):
        open_video(video.parent / "nope.mp4", short_side=32)
