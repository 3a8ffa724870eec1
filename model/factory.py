"""Building models, tokenising captions and normalising frames: the entry points users call."""

from __future__ import annotations

import open_clip
import torch

from model.config import ModelConfig
from model.prompt_switch import PromptSwitchCLIP
from model.weights import load_clip_weights

CLIP_MEAN = open_clip.OPENAI_DATASET_MEAN
CLIP_STD = open_clip.OPENAI_DATASET_STD
CONTEXT_LENGTH = 77


def build_model(config: ModelConfig) -> PromptSwitchCLIP:
    """The model `config` describes, with CLIP weights from `config.pretrained` (a local path) when set."""
    clip = open_clip.CLIP(**config.clip)
    if config.pretrained:
        load_clip_weights(clip, config.pretrained)
    return PromptSwitchCLIP(config, clip)


def create_model(
    name: str, *, frames_per_group: int = 6, pretrained: str | None = None, **options
) -> PromptSwitchCLIP:
    """`name` is an open_clip ViT name (ViT-B-32, ViT-B-32-quickgelu, ViT-B-16, ...) or "tiny".

    `options` are the other `ModelConfig` fields (caption_weight, caption_layers, prompt_init_std, ...).
    OpenAI weights need the -quickgelu variant of the name.
    """
    return build_model(
        ModelConfig(name=name, frames_per_group=frames_per_group, pretrained=pretrained, **options)
    )


def tokenize(texts: str | list[str]) -> torch.Tensor:
    """CLIP BPE token ids, (N, 77); the vocabulary ships with open_clip, so this works offline."""
    return open_clip.tokenize(texts, context_length=CONTEXT_LENGTH)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., 3, H, W) -> float frames normalised with CLIP's mean and std, on their device.

    Frames cross the object store as uint8 (4x smaller); this runs on the trainer's device.
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(3, 1, 1)
    return (frames.float() / 255.0 - mean) / std
