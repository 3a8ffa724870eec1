"""Optimiser parameter groups: CLIP's weights vs the modules Prompt Switch adds (docs/model.md §4)."""

from __future__ import annotations

from torch import nn

# The official code files parameters by name: anything called "prompt", "caption" or "pool" gets the
# new-module rate, so its prompt aggregation (named "attn") lands in the CLIP group by accident.
_OFFICIAL_NEW = ("prompt", "caption", "pool")
_NEW_MODULES = ("prompt_cube", "aggregation.", "caption_head.")


def is_new_parameter(name: str, *, official_grouping: bool = False) -> bool:
    if official_grouping:
        return any(word in name for word in _OFFICIAL_NEW)
    return name.startswith(_NEW_MODULES)


def parameter_groups(
    model: nn.Module, *, clip_lr: float, new_lr: float, weight_decay: float, official_grouping: bool = False
) -> list[dict]:
    """Two AdamW groups, named "clip" and "new". `official_grouping` reproduces the official code's split."""
    clip, new = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (new if is_new_parameter(name, official_grouping=official_grouping) else clip).append(param)
    return [
        {"name": "clip", "params": clip, "lr": clip_lr, "weight_decay": weight_decay},
        {"name": "new", "params": new, "lr": new_lr, "weight_decay": weight_decay},
    ]
