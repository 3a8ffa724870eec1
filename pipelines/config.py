"""Data options: one typed object, validated before any Ray work starts."""

from __future__ import annotations

from dataclasses import dataclass

from model.config import require

CACHE_FORMATS = ("jpeg", "raw")


@dataclass(frozen=True)
class DataConfig:
    manifest: str = ""  # Parquet manifest from `promptswitch data prepare` or `data synth`
    image_size: int | None = None  # crop fed to the model: its input size, which RunConfig fills in
    train_groups: int = 1  # groups of frames_per_group frames per training sample (docs/data.md §1: one)
    eval_groups: int = 2  # evaluation: two independent groups spanning the video
    train_crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop's area range (docs/data.md §2)
    train_flip_p: float = 0.5  # horizontal flip; 0 where captions name left and right (the synthetic data)
    max_bad_fraction: float = 0.01  # more bad videos than this fails the run, fewer are dropped and reported
    decode_batch_size: int = 8  # videos per Ray Data decode task
    cache_dir: str | None = None  # preprocessing cache root; None decodes the raw files every epoch
    cache_fps: float = 4.0  # frames per second kept in the cache
    cache_short_side: int = 224
    cache_format: str = "jpeg"

    def __post_init__(self) -> None:
        size = self.image_size
        require(size is None or size >= 16, "data.image_size", size, "an integer >= 16, or null")
        require(self.train_groups >= 1, "data.train_groups", self.train_groups, "an integer >= 1")
        require(self.eval_groups >= 1, "data.eval_groups", self.eval_groups, "an integer >= 1")
        low, high = self.train_crop_scale
        require(
            0 < low <= high <= 1,
            "data.train_crop_scale",
            self.train_crop_scale,
            "[low, high] with 0 < low <= high <= 1",
        )
        require(0 <= self.train_flip_p <= 1, "data.train_flip_p", self.train_flip_p, "in [0, 1]")
        require(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "in [0, 1]")
        require(
            self.decode_batch_size >= 1, "data.decode_batch_size", self.decode_batch_size, "an integer >= 1"
        )
        require(self.cache_fps > 0, "data.cache_fps", self.cache_fps, "a number > 0")
        require(
            self.cache_short_side >= (size or 16),
            "data.cache_short_side",
            self.cache_short_side,
            f"an integer >= the model's input size ({size})" if size else "an integer >= 16",
        )
        require(
            self.cache_format in CACHE_FORMATS,
            "data.cache_format",
            self.cache_format,
            " or ".join(CACHE_FORMATS),
        )
