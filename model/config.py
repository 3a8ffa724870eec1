"""Model shapes and options as small, validated config objects.

`ModelConfig` is the one object that describes a Prompt Switch model; the orchestrator's run config embeds it,
so the same typed values flow from the command line into `build_model`.

This module imports neither torch nor open_clip: a config is checked in the CLI before anything heavy loads,
and Ray's controller processes unpickle configs without paying for torch. open_clip's architectures are read
from the JSON files it ships.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and what is allowed."""


# A CLIP small enough to train in seconds on a CPU, for tests and the demo. Shapes follow open_clip's
# CLIPVisionCfg / CLIPTextCfg so the same code path builds it and ViT-B/32.
TINY_CLIP = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 128, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

_LOCAL_CLIPS = {"tiny": TINY_CLIP}


def available_clips() -> list[str]:
    """Names `create_model` accepts: our registered configs and open_clip's plain CLIP ViTs."""
    return sorted(_LOCAL_CLIPS) + sorted(n for n, cfg in _open_clip_configs().items() if _is_plain_vit(cfg))


@functools.cache
def _open_clip_configs() -> dict[str, dict]:
    """open_clip's architecture registry, as it builds it: every JSON in its model_configs folder that has
    the three sections of a CLIP config."""
    spec = importlib.util.find_spec("open_clip")
    folder = Path(spec.submodule_search_locations[0]) / "model_configs"
    configs = {}
    for path in folder.glob("*.json"):
        cfg = json.loads(path.read_text())
        if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            configs[path.stem] = cfg
    return configs


def clip_config(name: str) -> dict:
    """open_clip-style architecture dict for `name`; a clear error for anything Prompt Switch cannot wrap."""
    if name in _LOCAL_CLIPS:
        return copy.deepcopy(_LOCAL_CLIPS[name])
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(
            f"model.name={name!r}: hub and directory model names are not used; give an architecture name "
            "(e.g. ViT-B-32) and pass local weights with pretrained=PATH"
        )
    cfg = copy.deepcopy(_open_clip_configs().get(name))
    if cfg is None:
        raise ConfigError(f"model.name={name!r} is unknown; allowed: {', '.join(available_clips())}")
    if not _is_plain_vit(cfg):
        raise ConfigError(
            f"model.name={name!r} is not a plain CLIP ViT (Prompt Switch works inside ViT blocks); "
            f"allowed: {', '.join(available_clips())}"
        )
    return cfg


def _is_plain_vit(cfg: dict | None) -> bool:
    if not cfg or cfg.get("custom_text") or "multimodal_cfg" in cfg:
        return False
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    unsupported_vision = (
        "timm_model_name",
        "attentional_pool",
        "block_type",
        "qk_norm",
        "scaled_cosine_attn",
        "scale_heads",
        "scale_attn_inner",
        "scale_attn",
        "scale_fc",
        "ls_init_value",
        "final_ln_after_pool",
    )
    if any(vision.get(k) for k in unsupported_vision) or isinstance(vision.get("layers"), (list, tuple)):
        return False
    if vision.get("pool_type", "tok") != "tok" or vision.get("patch_dropout", 0.0) > 0:
        return False
    return not text.get("hf_model_name") and text.get("pool_type", "argmax") == "argmax"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a Prompt Switch model. Defaults are the paper's (docs/model.md §2-4)."""

    name: str = "ViT-B-32"
    frames_per_group: int = 6  # T: frames per group, and prompts per frame (the cube is T x T x width)
    pretrained: str | None = None  # local weights file or Hugging Face CLIPModel folder; None: random init
    prompt_init_std: float | None = None  # None: 0.02 * width**-0.5, as the official code
    caption_weight: float = 0.5  # lambda; 0 builds no caption head at all
    caption_layers: int = 2
    caption_heads: int = 8
    frequent_word_weight: float = 0.25
    grad_checkpointing: bool = False
    # Ablations: without prompts the model is mean-pooled CLIP; aggregation needs the prompts.
    prompts: bool = True
    aggregation: bool = True
    clip: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip", clip_config(self.name))
        require(
            self.frames_per_group >= 1, "model.frames_per_group", self.frames_per_group, "an integer >= 1"
        )
        require(self.caption_weight >= 0, "model.caption_weight", self.caption_weight, "a number >= 0")
        require(self.caption_layers >= 1, "model.caption_layers", self.caption_layers, "an integer >= 1")
        require(
            0 < self.frequent_word_weight <= 1,
            "model.frequent_word_weight",
            self.frequent_word_weight,
            "in (0, 1]",
        )
        require(
            self.prompt_init_std is None or self.prompt_init_std > 0,
            "model.prompt_init_std",
            self.prompt_init_std,
            "a number > 0, or null for the official default",
        )
        require(
            self.prompts or not self.aggregation,
            "model.aggregation",
            self.aggregation,
            "false when model.prompts is false (it aggregates the prompts)",
        )
        text_width = self.clip["text_cfg"].get("width", 512)
        require(
            self.caption_heads >= 1 and text_width % self.caption_heads == 0,
            "model.caption_heads",
            self.caption_heads,
            f"a divisor of the text width {text_width}",
        )

    @property
    def embed_dim(self) -> int:
        """The width of the joint embedding: what a video or a text becomes."""
        return self.clip["embed_dim"]

    @property
    def vision_width(self) -> int:
        return self.clip["vision_cfg"].get("width", 768)

    @property
    def image_size(self) -> int:
        return self.clip["vision_cfg"].get("image_size", 224)

    @property
    def text_width(self) -> int:
        return self.clip["text_cfg"].get("width", 512)


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise ConfigError naming `key`, its bad value and what is allowed, unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid; allowed: {allowed}")
