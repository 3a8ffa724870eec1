"""Load pretrained CLIP weights from a local path into an already-built open_clip `CLIP`.

Three forms are accepted: OpenAI's TorchScript `.pt` archives, open_clip checkpoints (torch files or
safetensors) and Hugging Face `CLIPModel` folders, whose names are converted to open_clip's. Nothing is ever
downloaded, and every model tensor must come from the file: a partial or mismatched load raises
`WeightsError`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import open_clip
import safetensors.torch
import torch
from open_clip.transformer import QuickGELU
from torch import nn

EXPECTED = (
    "expected a local file: an OpenAI CLIP .pt archive, an open_clip checkpoint "
    "(.pt/.pth/.bin/.safetensors), or a Hugging Face CLIPModel folder"
    " with config.json and model.safetensors or pytorch_model.bin"
)
# OpenAI archives carry these as tensors; open_clip keeps them as plain attributes.
_OPENAI_EXTRAS = {"input_resolution", "context_length", "vocab_size"}


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the model; the message says what was expected."""


def load_clip_weights(clip: open_clip.model.CLIP, path: str | os.PathLike) -> None:
    """Fill every tensor of `clip` from the weights at local `path`; raise WeightsError if anything is off."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"pretrained weights {str(path)!r} do not exist; {EXPECTED}")
    if path.is_dir():
        state_dict = _read_hf_folder(path, clip)
    else:
        state_dict = _read_file(path)
        if _OPENAI_EXTRAS & state_dict.keys():
            _check_openai_activation(clip, path)
            state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRAS}
    _load_strict(clip, state_dict, path)


def _check_openai_activation(clip: open_clip.model.CLIP, path: Path) -> None:
    # OpenAI trained with QuickGELU; the shapes match a GELU model exactly, so only this check catches it.
    act = clip.visual.transformer.resblocks[0].mlp.gelu
    if not isinstance(act, QuickGELU):
        raise WeightsError(
            f"{str(path)!r} holds OpenAI CLIP weights, which need QuickGELU: use the -quickgelu model name "
            f"(e.g. ViT-B-32-quickgelu), not one built with {type(act).__name__}"
        )


# --- plain files ---


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except Exception as e:
            raise WeightsError(f"cannot read {str(path)!r} as safetensors ({e}); {EXPECTED}") from e
    try:
        # TorchScript's unpickler only rebuilds tensors and scripted code, so OpenAI's archives are safe to
        # open. torch warns that torch.jit is deprecated; it is still the only reader for those archives.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:  # not a TorchScript archive
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(
                f"{str(path)!r} pickles Python objects besides tensors, which are not loaded "
                f"(torch.load weights_only=True runs no code from files); {EXPECTED}"
            ) from e
        except Exception as e:
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            raise WeightsError(
                f"{str(path)!r} is neither a TorchScript archive nor a torch.save file ({reason}); {EXPECTED}"
            ) from e
    if isinstance(obj, dict):
        obj = obj.get("state_dict", obj.get("model", obj))  # training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{str(path)!r} holds no state dict of tensors; {EXPECTED}")
    # DataParallel / DistributedDataParallel checkpoints prefix every name with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


# --- Hugging Face CLIPModel folders ---

_HF_NAMES = {  # prefix in HF -> prefix in open_clip (pre_layrnorm is HF's own spelling)
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm": "ln_final",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm": "visual.ln_pre",
    "vision_model.post_layernorm": "visual.ln_post",
    "logit_scale": "logit_scale",
}
_HF_BLOCK = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# What transformers assumes when config.json leaves a key out (CLIPTextConfig / CLIPVisionConfig defaults).
_HF_DEFAULTS = {
    "text_config": {
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    "vision_config": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 32,
        "image_size": 224,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}


def _read_hf_folder(folder: Path, clip: open_clip.model.CLIP) -> dict[str, torch.Tensor]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        reason = f"{str(folder)!r} is a folder without a readable config.json ({e})"
        raise WeightsError(f"{reason}; {EXPECTED}") from e
    _check_hf_config(config, clip, folder)
    readers = (("model.safetensors", safetensors.torch.load_file), ("pytorch_model.bin", _torch_load))
    for name, read in readers:  # safetensors first: it cannot run code
        files = [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded checkpoint
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        if all(f.is_file() for f in files):
            try:
                hf = {k: v for f in files for k, v in read(f).items()}
            except Exception as e:
                raise WeightsError(f"cannot read the weights in {str(folder)!r} ({e}); {EXPECTED}") from e
            return _from_hf(hf, clip)
    raise WeightsError(
        f"{str(folder)!r} has config.json but neither model.safetensors nor pytorch_model.bin; {EXPECTED}"
    )


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _from_hf(hf: dict[str, torch.Tensor], clip: open_clip.model.CLIP) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for key, value in hf.items():
        if key.endswith("position_ids"):  # a buffer HF rebuilds itself
            continue
        if m := _HF_LAYER.fullmatch(key):
            tower, i, name, kind = m.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{i}."
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{prefix}attn.in_proj_{kind}", {})[name[-6]] = value
            else:  # unknown names keep their HF spelling so the strict check reports them
                out[f"{prefix}{_HF_BLOCK.get(name, name)}.{kind}"] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.T  # HF Linear stores (out, in); open_clip multiplies x @ proj
        elif key == "text_projection.weight":
            if isinstance(clip.text_projection, nn.Linear):  # open_clip built with proj_bias: HF has no bias
                out["text_projection.weight"] = value
                if clip.text_projection.bias is not None:
                    out["text_projection.bias"] = torch.zeros(value.shape[0], dtype=value.dtype)
            else:
                out["text_projection"] = value.T
        else:
            hf_prefix = next((p for p in _HF_NAMES if key == p or key.startswith(p + ".")), None)
            out[_HF_NAMES[hf_prefix] + key[len(hf_prefix) :] if hf_prefix else key] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"{key}: the file has only the {sorted(parts)} projections; expected q, k, v")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # nn.MultiheadAttention's packed order
    return out


def _check_hf_config(config: dict, clip: open_clip.model.CLIP, folder: Path) -> None:
    """Compare config.json with the model: heads, activation and eps do not show in any tensor shape."""
    visual = clip.visual
    vblock, tblock = visual.transformer.resblocks[0], clip.transformer.resblocks[0]
    wanted = {
        "vision_config": {
            "hidden_size": visual.conv1.out_channels,
            "num_hidden_layers": len(visual.transformer.resblocks),
            "num_attention_heads": vblock.attn.num_heads,
            "intermediate_size": vblock.mlp.c_fc.out_features,
            "patch_size": tuple(visual.patch_size),
            "image_size": tuple(visual.image_size),
            "hidden_act": _act_name(vblock.mlp.gelu),
            "layer_norm_eps": visual.ln_post.eps,
        },
        "text_config": {  # open_clip's CLIP keeps the text tower's modules on itself
            "hidden_size": clip.transformer.width,
            "num_hidden_layers": len(clip.transformer.resblocks),
            "num_attention_heads": tblock.attn.num_heads,
            "intermediate_size": tblock.mlp.c_fc.out_features,
            "vocab_size": clip.vocab_size,
            "max_position_embeddings": clip.context_length,
            "hidden_act": _act_name(tblock.mlp.gelu),
            "layer_norm_eps": clip.ln_final.eps,
        },
    }
    problems = []
    if config.get("model_type", "clip") != "clip":
        problems.append(f"model_type: file has {config['model_type']!r}, expected 'clip' (a CLIPModel)")
    for tower, model_values in wanted.items():
        # Old configs keep overrides in "<tower>_dict"; transformers applies those last.
        found = {**_HF_DEFAULTS[tower], **(config.get(tower) or {}), **(config.get(f"{tower}_dict") or {})}
        for key, model_value in model_values.items():
            file_value = found[key]
            if key in ("patch_size", "image_size"):
                file_value = tuple(file_value) if isinstance(file_value, (list, tuple)) else (file_value,) * 2
            if file_value != model_value:
                problems.append(f"{tower}.{key}: file has {file_value!r}, model has {model_value!r}")
    file_dim = config.get("projection_dim", 512)
    model_dim = visual.proj.shape[1] if visual.proj is not None else None
    if file_dim != model_dim:
        problems.append(f"projection_dim: file has {file_dim!r}, model has {model_dim!r}")
    if problems:
        hints = []
        if any("hidden_act" in p for p in problems):
            hints.append(
                "hidden_act 'quick_gelu' needs a model built with quick_gelu=True (e.g. a "
                "*-quickgelu name), 'gelu' one with quick_gelu=False"
            )
        if any("hidden_act" not in p for p in problems):
            hints.append(
                "sizes differ: the folder is for another architecture; pick the matching model name "
                "(e.g. ViT-B-16 vs ViT-B-32)"
            )
        raise WeightsError(
            f"{str(folder / 'config.json')!r} does not match this CLIP model:\n  "
            + "\n  ".join(problems)
            + "\n"
            + "\n".join(hints)
        )


def _act_name(act: nn.Module) -> str:
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    return type(act).__name__


# --- strict loading ---


def _load_strict(clip: open_clip.model.CLIP, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    own = clip.state_dict()
    # Non-persistent buffers (the causal attn_mask) are rebuilt by the model, but scripted archives hold them.
    computed = {name for name, _ in clip.named_buffers()} - set(own)
    state_dict = {k: v for k, v in state_dict.items() if k not in computed}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        clip.load_state_dict(state_dict, strict=True)
        return
    problems = [f"{k}: model has {tuple(own[k].shape)}, file has {tuple(state_dict[k].shape)}" for k in wrong]
    if missing:
        problems.append(f"{len(missing)} model tensors missing from the file: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} file tensors the model does not have: {_few(unexpected)}")
    hints = []
    if wrong:
        patch = ""
        if "visual.conv1.weight" in wrong:
            model_patch, file_patch = (d["visual.conv1.weight"].shape[-1] for d in (own, state_dict))
            patch = f" (patch size {file_patch} in the file vs {model_patch} in the model)"
        hints.append(
            f"shapes differ{patch}, so the file is for another architecture: pick the model name "
            "that matches it, e.g. ViT-B-16 vs ViT-B-32 (width, layers, image size must match too)"
        )
    if any(k.startswith(("text_model.", "vision_model.")) for k in unexpected):
        hints.append("the names look like a Hugging Face CLIPModel: pass its folder (with config.json)")
    raise WeightsError(
        f"{str(path)!r} does not fit this CLIP model:\n  "
        + "\n  ".join(problems)
        + "".join("\n" + h for h in hints)
    )


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
