"""A synthetic dataset on disk: real mp4 files of `pipelines.synthetic` videos and their manifest.

It exercises the whole data path (decode, sample, transform) without downloading anything. Each video
has two captions: the spec's own ("a red circle moves left, then up") and a paraphrase ("the red circle
goes left and then up"), so multi-caption handling is exercised too. Test and val get whole videos.

Deterministic: the same arguments give the same manifest (up to the absolute paths) and the same files.
libx264 is not byte-deterministic with its SIMD code on small frames (about 1 encode in 60 of a 32-96 px
video came out different, depending on the process's earlier allocations), so it runs with `asm=0` and
one thread, which made 1,200 encodes of 36 videos identical; `mpeg4`, the fallback, was deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import pyarrow as pa

from pipelines.manifest import SCHEMA, write_manifest
from pipelines.synthetic import VideoSpec, random_specs, render
from pipelines.temporal import Sequence, render_sequence, twin_pairs
from pipelines.video import DECORD_BAD_WIDTHS

VIDEO_DIR = "videos"
MANIFEST_NAME = "manifest.parquet"
CORRUPT_KINDS = ("empty", "garbage", "truncated", "damaged")

_X264_OPTIONS = {"crf": "18", "threads": "1", "x264-params": "asm=0"}
# qp 0 is x264's lossless mode: a frame decodes to exactly its yuv420p input wherever it sits in the file.
_X264_LOSSLESS = _X264_OPTIONS | {"crf": "0", "qp": "0"}


def paraphrase(spec: VideoSpec) -> str:
    return f"the {spec.colour} {spec.shape} goes {spec.first} and then {spec.then}"


def video_encoder() -> str:
    """H.264 (libx264) where this PyAV build has it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(
    path: str | Path, frames: np.ndarray, fps: int, *, codec: str | None = None, lossless: bool = False
) -> Path:
    """Encode (F, H, W, 3) uint8 RGB frames (even H and W) as a yuv420p mp4, deterministically.

    `lossless` (libx264 only): equal frames decode equal, in any file and at any position.
    """
    path = Path(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}")
    codec = codec or video_encoder()
    if lossless and codec != "libx264":
        raise ValueError(f"lossless encoding needs libx264, which this PyAV build lacks (it has {codec})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps  # a key frame a second, as in real videos
        if codec == "libx264":
            stream.options = dict(_X264_LOSSLESS if lossless else _X264_OPTIONS)
        else:
            stream.codec_context.thread_count = 1
            stream.bit_rate = 2_000_000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_synthetic_dataset(
    out_dir: str | Path,
    videos: int,
    seed: int,
    *,
    frames: int = 48,
    size: int = 96,
    fps: int = 12,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
    codec: str | None = None,
) -> Path:
    """Write `videos` distinct synthetic videos to out_dir/videos/ and their manifest; return its path.

    The manifest (out_dir/manifest.parquet) has two rows per video, the caption then its paraphrase,
    ordered by video id. round(videos * test_fraction) videos are test, round(videos * val_fraction)
    val, the rest train (at least one), chosen by `seed`.
    """
    out_dir = Path(out_dir).resolve()
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if size < 16 or size % 2 or size in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"size must be even, >= 16 and not one of {sorted(DECORD_BAD_WIDTHS)} "
            f"(decord cannot return frames that wide), got {size}"
        )
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    specs = random_specs(videos, seed)  # raises beyond the 144 distinct videos
    n_test = int(np.floor(videos * test_fraction + 0.5))
    n_val = int(np.floor(videos * val_fraction + 0.5))
    if n_test + n_val >= videos:
        raise ValueError(f"{videos} videos leave none for training with {n_test} test and {n_val} val")
    order = np.random.default_rng(seed).permutation(videos)
    splits = np.full(videos, "train", dtype=object)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_val]] = "val"

    rendered = (
        (f"synth-{i:04d}", render(spec, frames, size), (spec.caption, paraphrase(spec)), str(splits[i]))
        for i, spec in enumerate(specs)
    )
    return _write_dataset(out_dir, rendered, fps, codec=codec)


def _write_dataset(
    out_dir: Path, videos: Iterable[tuple[str, np.ndarray, tuple[str, ...], str]], fps: int, **encoding
) -> Path:
    """Each (video_id, frames, captions, split) as out_dir/videos/<video_id>.mp4, and the manifest of them
    all: a row per caption."""
    rows: dict[str, list[str]] = {name: [] for name in SCHEMA.names}
    for video_id, frames, captions, split in videos:
        path = write_video(out_dir / VIDEO_DIR / f"{video_id}.mp4", frames, fps, **encoding)
        for caption in captions:
            rows["video_id"].append(video_id)
            rows["video_path"].append(str(path))
            rows["caption"].append(caption)
            rows["split"].append(split)
    manifest = out_dir / MANIFEST_NAME
    write_manifest(pa.table(rows, schema=SCHEMA), manifest)
    return manifest


def twin_paraphrase(sequence: Sequence) -> str:
    return f"first {sequence.first.caption}, and after it {sequence.then.caption}"


def write_twin_dataset(
    out_dir: str | Path,
    pairs: int,
    seed: int,
    *,
    test_pairs: int = 20,
    val_pairs: int = 10,
    frames: int = 48,
    size: int = 64,
    fps: int = 12,
) -> Path:
    """Write `pairs` order-twin pairs of videos (`pipelines.temporal`) to out_dir/videos/ and their manifest.

    Twins always share a split: the test split holds `test_pairs` whole pairs, so every test video's twin
    is a test video too. Each video has its caption and a paraphrase. Encoded losslessly, so a twin's
    frames decode to exactly the video's frames in the other order.
    """
    if test_pairs + val_pairs >= pairs:
        raise ValueError(f"{pairs} pairs leave none for training with {test_pairs} test and {val_pairs} val")

    def videos():
        for i, pair in enumerate(twin_pairs(pairs, seed)):
            split = "test" if i < test_pairs else "val" if i < test_pairs + val_pairs else "train"
            for j, sequence in enumerate(pair):
                captions = (sequence.caption, twin_paraphrase(sequence))
                yield f"twins-{i:04d}-{'ab'[j]}", render_sequence(sequence, frames, size), captions, split

    return _write_dataset(Path(out_dir).resolve(), videos(), fps, lossless=True)


def twin_of(video_id: str) -> str:
    """The video id of the twin of `video_id` in a `write_twin_dataset` manifest."""
    return video_id[:-1] + ("b" if video_id.endswith("a") else "a")


def corrupt_copies(
    out_dir: str | Path,
    kinds: tuple[str, ...] = ("empty", "garbage", "truncated"),
    *,
    source: str | Path | None = None,
) -> dict[str, Path]:
    """Deliberately bad copies of a good mp4, written beside it as corrupt-<kind>.mp4.

    kinds: "empty" (zero bytes), "garbage" (random bytes, the good file's length), "truncated" (two
    files, keys "truncated_50" and "truncated_10": the good file cut to 50% and 10% of its bytes) and
    "damaged" (container intact, second half of the frame data zeroed: opens, fails when decoded).
    `source` defaults to the first video in out_dir/videos/, or a new out_dir/good.mp4 if there is none.
    """
    out_dir = Path(out_dir)
    unknown = set(kinds) - set(CORRUPT_KINDS)
    if unknown:
        raise ValueError(f"unknown corruption kinds {sorted(unknown)}; choose from {CORRUPT_KINDS}")
    if source is None:
        found = sorted(p for p in (out_dir / VIDEO_DIR).glob("*.mp4") if not p.name.startswith("corrupt-"))
        if found:
            source = found[0]
        else:
            source = write_video(out_dir / "good.mp4", render(random_specs(1, 0)[0], 24, 64), 12)
    source = Path(source)
    good = source.read_bytes()
    made: dict[str, Path] = {}

    def put(key: str, data: bytes) -> None:
        made[key] = source.parent / f"corrupt-{key.replace('_', '-')}.mp4"
        made[key].write_bytes(data)

    for kind in kinds:
        if kind == "empty":
            put("empty", b"")
        elif kind == "garbage":
            put("garbage", np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes())
        elif kind == "truncated":
            put("truncated_50", good[: len(good) // 2])
            put("truncated_10", good[: len(good) // 10])
        else:
            put("damaged", _zero_second_half_of_mdat(good))
    return made


def _zero_second_half_of_mdat(data: bytes) -> bytes:
    """The mp4 with the second half of its `mdat` payload zeroed; every other box untouched."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:  # 64-bit size follows
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # box runs to the end of the file
            size = len(data) - pos
        if size < header:
            break
        if kind == b"mdat":
            start, end = pos + header, pos + size
            middle = start + (end - start) // 2
            return data[:middle] + bytes(end - middle) + data[end:]
        pos += size
    raise ValueError("no mdat box found: not an mp4 file?")
