"""Prompt Switch (ICCV 2023) on open_clip: model, losses, weights and retrieval metrics."""

from model.config import ConfigError, ModelConfig, available_clips
from model.factory import CLIP_MEAN, CLIP_STD, build_model, create_model, normalize_frames, tokenize
from model.losses import contrastive_loss
from model.metrics import format_metrics_table, retrieval_metrics
from model.optim import parameter_groups
from model.prompt_switch import PromptSwitchCLIP
from model.weights import WeightsError, load_clip_weights

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ConfigError",
    "ModelConfig",
    "PromptSwitchCLIP",
    "WeightsError",
    "available_clips",
    "build_model",
    "contrastive_loss",
    "create_model",
    "format_metrics_table",
    "load_clip_weights",
    "normalize_frames",
    "parameter_groups",
    "retrieval_metrics",
    "tokenize",
]
