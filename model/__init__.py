"""Prompt Switch (ICCV 2023) on open_clip: model, losses, weights and retrieval metrics.

The names below load on first use: `from model.config import ModelConfig` (and the run config built on it)
stays free of torch, which a CLI that checks a config, or a Ray controller that unpickles one, need not load.
"""

import importlib

_EXPORTS = {
    "model.config": ("ConfigError", "ModelConfig", "available_clips"),
    "model.factory": ("CLIP_MEAN", "CLIP_STD", "build_model", "create_model", "normalize_frames", "tokenize"),
    "model.losses": ("contrastive_loss",),
    "model.metrics": ("format_metrics_table", "retrieval_metrics"),
    "model.optim": ("parameter_groups",),
    "model.prompt_switch": ("PromptSwitchCLIP",),
    "model.weights": ("WeightsError", "load_clip_weights"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
