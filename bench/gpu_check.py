"""First run on a GPU machine: does the project agree, resume, go fast and get fed? One command, < 8 minutes.

    .venv/bin/python bench/gpu_check.py --out gpu_check.json          # on one GPU
    .venv/bin/python bench/gpu_check.py --device cpu --smoke --peak-tflops 1   # the logic, on a CPU

Sections (each can be left out with --skip NAME):

  agreement   the training losses and the video/text embeddings of one seeded batch on CPU fp32 (the
              reference), GPU fp32 with TF32 off, with TF32 on (as recipe.py sets it) and GPU bf16
              autocast, for the tiny model and ViT-B/32 (random init); each within TOLERANCES.
  checkpoint  2 training steps on the GPU, `training.checkpoint.save`, a fresh model on the GPU and a
              fresh optimisation, `checkpoint.load`: weights and optimiser state equal, every optimiser
              state tensor on its parameter's device, a third step runs with a finite loss equal to the one
              the uninterrupted run gets.
  throughput  ViT-B/32 and ViT-B/16 (random init, nothing downloaded), the training step of
              `training/step.py` in bf16 autocast: samples/s, FLOPs per step (FlopCounterMode over one
              forward + backward), MFU against the card's peak dense bf16 FLOP/s, peak GPU memory. An
              out-of-memory batch is reported and retried at half the size. A video is 6 frames at 224 px:
              training samples one group of frames_per_group frames (evaluation uses two groups, 12).
  data        a synthetic dataset, its Parquet frame cache (`pipelines.cache.build_cache`), and the
              project's Ray Data pipeline (`prepare_data` + `train_dataset`, local Ray) feeding ViT-B/32 on
              the GPU: the fraction of step time spent waiting for the next batch.

Writes every figure and every check (measured value, tolerance, pass/fail) to --out and prints a summary.
Exit status: 0 all checks pass, 1 a check failed (or a section crashed), 2 no GPU, 3 a package is missing.

--smoke runs every section in a tiny configuration (tiny model, a few steps); with --device cpu the
"GPU" side of the agreement is the CPU again (fp32 repeated, and bf16 autocast on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project imports from a checkout even when it is not pip-installed
# Ray's worker processes inherit this environment: they unpickle pipelines.decode functions, so they need
# the checkout on their path too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded; fail at once if something tries

# Heavy imports (torch, ray, the project) live inside the functions below: the script must first be able
# to say which of them are missing on a fresh machine, before any of them is imported.

SECTIONS = ("agreement", "checkpoint", "throughput", "data")

# Module to check -> what provides it. The project's own modules are checked after the third-party ones,
# so that a missing dependency is named as such and not as "the project does not import".
THIRD_PARTY = {
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "numpy": "numpy",
    "open_clip": "open_clip_torch",
    "safetensors": "safetensors",
    "pyarrow": "pyarrow",
    "decord": "decord==0.6.0",
    "av": "av (PyAV)",
    "ray": "ray[default,train,tune,data]==2.60.0",
    "ray.data": "ray[data]==2.60.0",
}
PROJECT = (
    "model",
    "orchestrator.training.step",
    "orchestrator.training.checkpoint",
    "orchestrator.ray_runtime",
    "pipelines.synth",
    "pipelines.cache",
    "pipelines.dataset",
)
# The Makefile's order: torch and torchvision first, as a pinned pair (other builds of either do not import
# together), then the project, whose dependencies include everything else above.
INSTALL_COMMANDS = ("pip install torch==2.14.1 torchvision==0.29.1", "pip install -e .")

# Stated tolerances. Every comparison is against CPU fp32 on the same weights and the same batch.
TOLERANCES = {
    # True fp32 on both sides differs only in summation order (expected ~1e-6). bf16 autocast moves the
    # tiny model's embeddings by ~1e-3 (measured on the CPU) and TF32 by roughly 8x less, so 1e-4, not
    # a looser 1e-3, is what tells true fp32 from a TF32 leak.
    "fp32": {"embedding_max_abs_diff": 1e-4, "loss_rel_diff": 1e-4},
    # TF32 (what recipe.py enables on a GPU) keeps 10 mantissa bits of the matmul inputs.
    "tf32": {"embedding_min_cosine": 0.999, "loss_rel_diff": 1e-2},
    # bf16 keeps 8 mantissa bits; the contrastive logits and the cross-entropies stay in fp32.
    "bf16": {"embedding_min_cosine": 0.99, "loss_rel_diff": 5e-2},
    # Resumed vs uninterrupted third step: the same weights and batch on one device. Some slack rather
    # than bitwise: nothing promises that two model instances get the same GPU kernels.
    "resume_loss_rel_diff": 1e-3,
}

# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from the vendors' datasheets. First match wins;
# NVL variants are left out on purpose (different clocks): they need --peak-tflops.
PEAK_BF16 = (
    (r"H100.*PCIe", 756e12, "H100 PCIe"),
    (r"H100(?!.*NVL).*(SXM|HBM3)", 989e12, "H100 SXM"),
    (r"H200(?!.*NVL)", 989e12, "H200"),
    (r"A100", 312e12, "A100"),
    (r"A10G", 125e12, "A10G (approximate: the A10's datasheet figure; NVIDIA publishes none for the A10G)"),
    (r"\bL4\b", 121e12, "L4"),
)

# What each mode runs. --smoke: every section in seconds with the tiny model.
FULL = {
    "agreement_models": ["tiny", "ViT-B-32"],
    "agreement_batch": 4,
    "models": ["ViT-B-32", "ViT-B-16"],
    "batch_size": 16,  # fits a 24 GB card for ViT-B/16 at 6 frames without gradient checkpointing
    "warmup": 5,
    "steps": 20,
    "data_model": "ViT-B-32",
    "data_videos": 144,  # the synthetic set's maximum: 288 captions, 18 steps an epoch at batch 16
    "data_batch_size": 16,
    "data_steps": 30,
    "data_warmup": 5,
}
SMOKE = FULL | {
    "agreement_models": ["tiny"],
    "models": ["tiny"],
    "batch_size": 4,
    "warmup": 1,
    "steps": 2,
    "data_model": "tiny",
    "data_videos": 16,
    "data_batch_size": 4,
    "data_steps": 6,
    "data_warmup": 2,
}

CAPTIONS = (
    "a red circle moves left, then up",
    "a blue square moves right, then down",
    "a green triangle moves up, then left",
    "a yellow star moves down, then right",
)

# ------------------------------------------------------------------------------------------ requirements


def find_missing(modules) -> dict[str, str]:
    """Module name -> why it does not import, for each of `modules` that does not."""
    missing = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # not only ImportError: a broken native library raises OSError and friends
            missing[name] = f"{type(e).__name__}: {e}".splitlines()[0]
    return missing


def install_message(missing: dict[str, str]) -> str:
    """What is missing and the commands that install it, in the Makefile's order."""
    lines = ["gpu_check: these modules are missing or fail to import:"]
    for name, why in missing.items():
        lines.append(f"  {name:<26} from {THIRD_PARTY.get(name, 'this project')}: {why}")
    lines.append("Install them from the repository root, torch and torchvision first (as the Makefile does):")
    lines.append(f"  cd {ROOT}")
    lines += [f"  {sys.executable} -m {command}" for command in INSTALL_COMMANDS]
    return "\n".join(lines)


def check_requirements(third_party=tuple(THIRD_PARTY), project=PROJECT) -> int:
    """0 when everything imports, else print what is missing and how to install it, and return 3."""
    missing = find_missing(third_party)
    if not missing:  # the project's modules only make sense to try once their dependencies import
        missing = find_missing(project)
    if missing:
        print(install_message(missing), file=sys.stderr)
        return 3
    return 0


# ------------------------------------------------------------------------------------------ the report


class Section:
    """One section's figures and checks; a check is a measured value, its tolerance and pass/fail."""

    def __init__(self, name: str):
        self.name, self.figures, self.checks, self.status = name, {}, [], "skipped"
        self.error, self.seconds = None, 0.0

    def check(self, name: str, value, passed: bool, tolerance: str = "", note: str = "") -> bool:
        value = _plain(value)
        self.checks.append(
            {"name": name, "value": value, "tolerance": tolerance, "passed": bool(passed), "note": note}
        )
        shown = _fmt(value)
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {shown}{f' ({tolerance})' if tolerance else ''}")
        if note:
            print(f"        {note}")
        return bool(passed)

    def figure(self, key: str, value, show: str | None = None) -> None:
        self.figures[key] = _plain(value)
        if show is not None:
            print(f"  {show}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "figures": self.figures,
            "checks": self.checks,
            "error": self.error,
        }


def _plain(value):
    """Plain JSON values: tensors and numpy scalars become floats, non-finite floats become strings."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def run_section(section: Section, fn, *args) -> None:
    """Run one section; a crash fails that section (with its traceback in the JSON), not the others."""
    print(f"\n== {section.name}", flush=True)
    start = time.perf_counter()
    try:
        fn(section, *args)
        section.status = "passed" if all(c["passed"] for c in section.checks) else "failed"
    except Exception as e:
        section.status, section.error = "error", traceback.format_exc()
        print(f"  ERROR  {type(e).__name__}: {e}\n{section.error}", flush=True)
    section.seconds = time.perf_counter() - start
    print(f"  -> {section.status} in {section.seconds:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ shared pieces


def training_frames() -> int:
    """Frames per training sample: one group of frames_per_group (README: one random frame in each of 6
    segments; evaluation uses two groups, 12 frames)."""
    from model import ModelConfig
    from pipelines.config import DataConfig

    return ModelConfig.frames_per_group * DataConfig.train_groups


def make_batch(model, videos: int, frames: int, seed: int) -> dict:
    """A seeded batch as the pipeline delivers it: uint8 frames, token ids and video indices, on the CPU."""
    import torch

    from model import tokenize

    size = model.config.image_size
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randint(0, 256, (videos, frames, 3, size, size), dtype=torch.uint8, generator=g),
        "tokens": tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(videos)]),
        "video_index": torch.arange(videos),
    }


def train_step(model, opt, batch: dict, device, autocast, grad_clip: float):
    """The training loop's step (grad_accum 1): forward, backward, clip, AdamW, schedule, logit clamp.

    Returns the loss as a tensor on the device: like recipe.py, nothing here waits for the GPU.
    """
    from orchestrator.training.step import forward_losses

    losses = forward_losses(model, batch, device, autocast)
    opt.backward(losses["loss"])
    opt.step(model, grad_clip)
    return losses["loss"].detach()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 on or off for CUDA matmuls and cuDNN convolutions (the patch embedding), restored after."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_config(batch_size: int, precision: str, device, **overrides):
    from orchestrator.config import TrainConfig

    return TrainConfig(batch_size=batch_size, precision=precision, use_gpu=device.type == "cuda", **overrides)


# ------------------------------------------------------------------------------------------ 1. agreement


def agreement(section: Section, args, device) -> None:
    import torch

    from model import create_model

    frames = training_frames()
    section.figure("tolerances", {k: v for k, v in TOLERANCES.items() if k in ("fp32", "tf32", "bf16")})
    if device.type == "cuda":
        # (name, device, precision, TF32 on, tolerance kind) against CPU fp32
        variants = [
            ("cuda fp32 (TF32 off)", device, "fp32", False, "fp32"),
            ("cuda fp32 (TF32 on)", device, "fp32", True, "tf32"),
            ("cuda bf16 autocast", device, "bf16", False, "bf16"),
        ]
    else:  # no GPU to compare with: the CPU against itself, and CPU bf16 autocast for the bf16 logic
        variants = [
            ("cpu fp32 again", device, "fp32", False, "fp32"),
            ("cpu bf16 autocast", device, "bf16", False, "bf16"),
        ]
    for name in args.agreement_models:
        torch.manual_seed(args.seed)
        model = create_model(name)  # train mode: the training forward; no dropout anywhere in it
        batch = make_batch(model, args.agreement_batch, frames, args.seed)
        print(f"  {name}: {args.agreement_batch} videos x {frames} frames at {model.config.image_size} px")
        reference = embed_and_losses(model, batch, torch.device("cpu"), "fp32", tf32_on=False)
        model.to(device)
        for label, dev, precision, tf32_on, kind in variants:
            measured = compare(reference, embed_and_losses(model, batch, dev, precision, tf32_on))
            section.figure(f"{name} | {label}", measured)
            tol = TOLERANCES[kind]
            for emb in ("video", "text"):
                if kind == "fp32":
                    limit = tol["embedding_max_abs_diff"]
                    section.check(
                        f"{name} {label} vs cpu fp32: {emb} embedding max |diff|",
                        measured[f"{emb}_max_abs_diff"],
                        measured[f"{emb}_max_abs_diff"] <= limit,
                        f"<= {limit:g}",
                    )
                else:
                    limit = tol["embedding_min_cosine"]
                    section.check(
                        f"{name} {label} vs cpu fp32: {emb} embedding min cosine",
                        measured[f"{emb}_min_cosine"],
                        measured[f"{emb}_min_cosine"] >= limit,
                        f">= {limit:g}; max |diff| {measured[f'{emb}_max_abs_diff']:.2g}",
                    )
            limit = tol["loss_rel_diff"]
            section.check(
                f"{name} {label} vs cpu fp32: loss max relative diff ({', '.join(measured['losses'])})",
                measured["loss_max_rel_diff"],
                measured["loss_max_rel_diff"] <= limit,
                f"<= {limit:g}",
            )
        del model
        free_memory()


def embed_and_losses(model, batch: dict, device, precision: str, tf32_on: bool) -> dict:
    """The training losses and the video and text embeddings of `batch` on `device` at `precision`."""
    import torch

    from model import normalize_frames
    from orchestrator.training.step import autocast_for, forward_losses

    autocast = autocast_for(precision, device)
    context = tf32(tf32_on) if device.type == "cuda" else contextlib.nullcontext()
    with context, torch.no_grad():
        losses = forward_losses(model, batch, device, autocast)
        with autocast():
            video = model.encode_video(normalize_frames(batch["frames"].to(device)))
            text = model.encode_text(batch["tokens"].to(device))
    return {
        "losses": {k: v.item() for k, v in losses.items()},
        "video": video.float().cpu(),
        "text": text.float().cpu(),
    }


def compare(reference: dict, other: dict) -> dict:
    import torch.nn.functional as F

    out = {}
    for emb in ("video", "text"):
        a, b = reference[emb], other[emb]
        out[f"{emb}_max_abs_diff"] = (a - b).abs().max().item()
        out[f"{emb}_min_cosine"] = F.cosine_similarity(a, b, dim=-1).min().item()
    rel = {k: abs(other["losses"][k] - v) / max(abs(v), 1e-8) for k, v in reference["losses"].items()}
    out["losses"] = {k: {"reference": v, "this": other["losses"][k]} for k, v in reference["losses"].items()}
    out["loss_max_rel_diff"] = max(rel.values())
    return out


# ------------------------------------------------------------------------------------------ 2. checkpoint


def checkpoint_round_trip(section: Section, args, device) -> None:
    import torch

    from model import create_model
    from orchestrator.training import checkpoint
    from orchestrator.training.step import autocast_for, build_optimisation

    precision = args.precision
    # Learning rates far above the paper's, so that two steps visibly move every weight and moment.
    cfg = train_config(4, precision, device, clip_lr=1e-4, new_lr=1e-3)
    autocast = autocast_for(precision, device)
    frames = training_frames()

    def fresh(seed: int):
        # The order recipe.set_up_model uses: on the device first, then the optimiser (fused AdamW on
        # a GPU) and the load, which puts each state tensor beside its parameter.
        torch.manual_seed(seed)
        model = create_model("tiny").to(device)
        return model, build_optimisation(model, cfg, total_steps=10)

    model, opt = fresh(args.seed)
    batches = [make_batch(model, 4, frames, args.seed + i) for i in range(3)]
    losses = [train_step(model, opt, b, device, autocast, cfg.grad_clip).item() for b in batches[:2]]
    section.figure("precision", precision)
    section.figure("losses of steps 1-2", losses, f"steps 1-2 on {device.type}, {precision}: losses {losses}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-ckpt-") as tmp:
        folder = Path(tmp)
        checkpoint.save(folder, model, opt, checkpoint.TrainState(step=2, epoch=0), "# gpu_check\n")
        saved_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

        resumed, resumed_opt = fresh(args.seed + 1000)  # different weights until the load
        state = checkpoint.load(folder, resumed, resumed_opt)
        differing = [k for k, v in resumed.state_dict().items() if not torch.equal(v, saved_weights[k])]
        section.check(
            "loaded weights equal the saved ones",
            f"{len(saved_weights) - len(differing)}/{len(saved_weights)} tensors equal",
            not differing and resumed.state_dict().keys() == saved_weights.keys(),
            "all, bitwise",
            f"differ: {differing[:5]}" if differing else "",
        )
        report_state_devices(section, resumed, resumed_opt, "fresh model on the device, then load")
        same_moments = optimiser_states_equal(opt, resumed_opt)
        section.check("loaded optimiser moments equal the saved ones", same_moments, same_moments, "bitwise")
        section.check(
            "step and schedule restored",
            f"state.step={state.step}, scheduler.last_epoch={resumed_opt.scheduler.last_epoch}",
            state.step == 2 and resumed_opt.scheduler.last_epoch == opt.scheduler.last_epoch,
            f"step 2, last_epoch {opt.scheduler.last_epoch}",
        )
        # Step 3 from the checkpoint and without interruption: the same loss (the forward of step 3 sees
        # the weights after step 2, so a wrong load shows here even if the step itself runs).
        after_load = train_step(resumed, resumed_opt, batches[2], device, autocast, cfg.grad_clip).item()
        uninterrupted = train_step(model, opt, batches[2], device, autocast, cfg.grad_clip).item()
        section.check("step 3 after load: loss is finite", after_load, math.isfinite(after_load))
        rel = abs(after_load - uninterrupted) / max(abs(uninterrupted), 1e-8)
        limit = TOLERANCES["resume_loss_rel_diff"]
        section.check(
            "step 3 loss: resumed vs uninterrupted, relative diff",
            rel,
            rel <= limit,
            f"<= {limit:g}; {after_load:.6f} vs {uninterrupted:.6f}",
        )

    del model, opt, resumed, resumed_opt
    free_memory()


def report_state_devices(section: Section, model, opt, how: str) -> bool:
    """Check every optimiser state tensor is where the optimiser will look for it: beside its parameter.

    AdamW's `step` counter is the one exception: it stays on the CPU by design unless the group is fused
    or capturable, in which case it lives on the parameter's device too.
    """
    import torch

    checked, wrong = 0, []
    names = {p: n for n, p in model.named_parameters()}
    for group in opt.optimizer.param_groups:
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            for key, value in opt.optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor):
                    continue
                expected = p.device if key != "step" or on_device else torch.device("cpu")
                checked += 1
                if value.device != expected:
                    wrong.append(f"{names.get(p, '?')}.{key} on {value.device}, expected {expected}")
    return section.check(
        f"{how}: optimiser state tensors on their parameter's device",
        f"{checked - len(wrong)}/{checked}",
        checked > 0 and not wrong,
        "all, and at least one",
        "; ".join(wrong[:3]) + (f" ... ({len(wrong)} in all)" if len(wrong) > 3 else ""),
    )


def optimiser_states_equal(a, b) -> bool:
    import torch

    pa = [p for g in a.optimizer.param_groups for p in g["params"]]
    pb = [p for g in b.optimizer.param_groups for p in g["params"]]
    for x, y in zip(pa, pb, strict=True):
        sx, sy = a.optimizer.state.get(x, {}), b.optimizer.state.get(y, {})
        if sx.keys() != sy.keys():
            return False
        for key in sx:
            if not torch.equal(torch.as_tensor(sx[key]).cpu(), torch.as_tensor(sy[key]).cpu()):
                return False
    return True


# ------------------------------------------------------------------------------------------ 3. throughput


def peak_flops(device, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from); None when unknown."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for a CPU: give --peak-tflops"
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> tuple[float | None, str]:
    """The PEAK_BF16 entry for a CUDA device name such as "NVIDIA H100 80GB HBM3"."""
    for pattern, peak, label in PEAK_BF16:
        if re.search(pattern, name):
            return peak, f"table: {label}"
    return None, f"unknown card {name!r}: give --peak-tflops"


def throughput(section: Section, args, device) -> None:
    import torch

    peak, source = peak_flops(device, args.peak_tflops)
    frames = args.frames or training_frames()
    shown = f"{peak / 1e12:g}" if peak else "unknown"
    section.figure("peak_flops", peak, f"peak dense bf16: {shown} TFLOP/s ({source})")
    section.figure("peak_source", source)
    section.figure("frames_per_video", frames)
    section.figure("precision", args.precision)
    for name in args.models:
        batch = args.batch_size
        tried = []
        while True:
            oom = False
            try:
                with tf32(device.type == "cuda"):  # as recipe.py sets it on a GPU
                    result = measure_model(name, batch, frames, args, device, peak)
            except torch.cuda.OutOfMemoryError:  # a subclass of RuntimeError, raised only by CUDA
                oom = True
            free_memory()  # outside the except block, so the traceback's frames are gone
            if not oom:
                break
            tried.append(batch)
            print(f"  {name}: out of GPU memory at batch {batch}; retrying at {batch // 2}", flush=True)
            batch //= 2
            if batch < 2:  # the contrastive loss needs two videos
                raise RuntimeError(f"{name} does not fit at any batch size (tried {tried})")
        result["out_of_memory_at"] = tried
        section.figure(name, result)
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "unknown (no peak)"
        mem = f"{result['peak_memory_gib']:.2f} GiB" if result["peak_memory_gib"] is not None else "n/a"
        print(
            f"  {name}: batch {result['batch_size']} x {frames} frames at {result['image_size']} px: "
            f"{result['samples_per_s']:.1f} samples/s, {result['step_ms']:.1f} ms/step, "
            f"{result['flops_per_step'] / 1e12:.3f} TFLOP/step, {result['achieved_tflops']:.3g} TFLOP/s, "
            f"MFU {mfu}, peak memory {mem}",
            flush=True,
        )
        section.check(f"{name}: losses finite", result["last_loss"], math.isfinite(result["last_loss"]))
        # Backward is about 2x forward: a matmul for the input's gradient and one for the weight's (the
        # patch embedding needs no input gradient, so a little under 2).
        ratio = result["backward_flops"] / max(result["forward_flops"], 1)
        section.check(
            f"{name}: the FLOP count includes the backward (backward / forward)",
            ratio,
            1.5 <= ratio <= 2.5,
            "in [1.5, 2.5]",
        )
        if result["mfu"] is not None:  # above 1 means the FLOP count or the peak table is wrong
            section.check(f"{name}: MFU is plausible", result["mfu"], 0 < result["mfu"] <= 1, "in (0, 1]")


def measure_model(name: str, batch_size: int, frames: int, args, device, peak: float | None) -> dict:
    """samples/s of `name`'s training step at `batch_size`, its FLOPs, MFU and peak memory."""
    import torch

    from model import create_model
    from orchestrator.training.step import autocast_for, build_optimisation

    torch.manual_seed(args.seed)
    model = create_model(name, pretrained=None).to(device)  # random init: nothing is read or downloaded
    cfg = train_config(batch_size, args.precision, device)
    opt = build_optimisation(model, cfg, total_steps=args.warmup + args.steps + 1)
    autocast = autocast_for(args.precision, device)
    batch = make_batch(model, batch_size, frames, args.seed)  # on the CPU, as the pipeline delivers it

    forward_flops, backward_flops = count_step_flops(model, batch, device, autocast)
    flops = forward_flops + backward_flops
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss = float("nan")
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        loss = train_step(model, opt, batch, device, autocast, cfg.grad_clip)
    sync(device)
    wall = time.perf_counter() - start
    steps_per_s = args.steps / wall
    achieved = flops * steps_per_s
    return {
        "batch_size": batch_size,
        "frames_per_video": frames,
        "image_size": model.config.image_size,
        "frames_per_group": model.config.frames_per_group,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_ms": 1000 * wall / args.steps,
        "samples_per_s": batch_size * steps_per_s,
        "flops_per_step": flops,
        "forward_flops": forward_flops,
        "backward_flops": backward_flops,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "last_loss": float(loss),
    }


def count_step_flops(model, batch: dict, device, autocast) -> tuple[int, int]:
    """FLOPs of one forward and of its backward, counted by FlopCounterMode (the optimiser step is not).

    Attention goes through the math SDPA kernel while counting: the counter has no formula for some fused
    kernels (the CPU flash kernel) and would drop those FLOPs silently. The arithmetic is the same.
    Two counters, so that a backward the counter did not see (it runs on autograd's device threads on a
    GPU) shows up as a backward/forward ratio far from 2 instead of as a silently low MFU.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from orchestrator.training.step import forward_losses

    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH):
        with forward:
            loss = forward_losses(model, batch, device, autocast)["loss"]
        with backward:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return forward.get_total_flops(), backward.get_total_flops()


# ------------------------------------------------------------------------------------------ 4. data wait


def data_wait(section: Section, args, device, workdir: Path) -> None:
    import ray
    import torch

    from model import create_model
    from orchestrator.ray_runtime import connect
    from orchestrator.training.step import autocast_for, build_optimisation
    from pipelines.cache import build_cache
    from pipelines.config import DataConfig
    from pipelines.dataset import prepare_data, train_dataset
    from pipelines.manifest import read_manifest
    from pipelines.synth import write_synthetic_dataset

    torch.manual_seed(args.seed)
    model = create_model(args.data_model).to(device)
    size, fpg = model.config.image_size, model.config.frames_per_group

    start = time.perf_counter()
    # Every video in the training split. The 96 px videos are upscaled into a cache at the model's size, so
    # a sample costs what a real one does from the cache (6 JPEG decodes at that size, a crop, a resize);
    # a real 16:9 video's cached frames are wider, so real decoding costs somewhat more.
    manifest = write_synthetic_dataset(
        workdir / "synth", args.data_videos, seed=24, val_fraction=0.0, test_fraction=0.0
    )
    section.figure("synth_seconds", time.perf_counter() - start)
    config = DataConfig(
        manifest=str(manifest),
        image_size=size,
        cache_short_side=size,
        cache_dir=str(workdir / "cache"),
        train_flip_p=0.0,
    )
    # On a CPU the smoke run shares 2 cores; on a GPU machine Ray gets every core for decoding.
    how = connect(num_cpus=2 if device.type == "cpu" else None, object_store_mb=1024, dashboard=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        section.figure("ray", how)
        section.figure("ray_cpus", cpus, f"Ray: {how}, {cpus:.0f} CPUs for decoding")
        videos = sorted(set(read_manifest(manifest)["video_path"].to_pylist()))
        start = time.perf_counter()
        cache = build_cache(videos, config)
        section.figure("cache_build_seconds", time.perf_counter() - start)
        section.check(
            "cache built from every video, none bad",
            f"{cache.videos} videos, {len(cache.bad)} bad",
            cache.videos == len(videos) and not cache.bad,
        )
        data = prepare_data(config, fpg)  # builds the same key: must find the cache just built
        hit = bool(data.cache and data.cache.hit)
        section.check("prepare_data reuses the cache", hit, hit)
        dataset = train_dataset(data, config, fpg)
        cfg = train_config(args.data_batch_size, args.precision, device)
        opt = build_optimisation(model, cfg, total_steps=args.data_steps)
        autocast = autocast_for(args.precision, device)

        # As recipe.py measures it: the wait is from the end of one step to the next batch in hand
        # (an epoch's first wait includes restarting the pipeline); the step ends when its loss is read.
        waits, step_times, losses, epochs = [], [], [], 0
        dtypes = {"frames": torch.uint8, "tokens": torch.long, "video_index": torch.long}
        with tf32(device.type == "cuda"):  # as recipe.py sets it on a GPU
            while len(losses) < args.data_steps:
                epochs += 1
                tick = time.perf_counter()
                for batch in dataset.iter_torch_batches(  # as recipe.py feeds a GPU
                    batch_size=args.data_batch_size,
                    drop_last=True,
                    prefetch_batches=4 if device.type == "cuda" else 2,
                    pin_memory=device.type == "cuda",
                    dtypes=dtypes,
                ):
                    got = time.perf_counter()
                    # Read here, so that a step's time is the GPU's and the next wait is only the data's.
                    losses.append(train_step(model, opt, batch, device, autocast, cfg.grad_clip).item())
                    done = time.perf_counter()
                    waits.append(got - tick)
                    step_times.append(done - got)
                    tick = done
                    if len(losses) >= args.data_steps:
                        break
    finally:
        if how == "local":  # a cluster this script joined is left alone
            ray.shutdown()

    w = min(args.data_warmup, len(waits) - 1)  # the first steps include the pipeline's start
    steady_wait, steady_total = sum(waits[w:]), sum(waits[w:]) + sum(step_times[w:])
    result = {
        "model": args.data_model,
        "precision": args.precision,
        "batch_size": args.data_batch_size,
        "frames_per_video": fpg * config.train_groups,
        "image_size": size,
        "videos": len(videos),
        "steps": len(losses),
        "epochs": epochs,
        "warmup_steps_left_out": w,
        "first_batch_wait_s": waits[0],
        "wait_fraction": steady_wait / steady_total,
        "wait_fraction_all_steps": sum(waits) / (sum(waits) + sum(step_times)),
        "median_wait_ms": 1000 * sorted(waits[w:])[len(waits[w:]) // 2],
        "median_step_ms": 1000 * sorted(step_times[w:])[len(step_times[w:]) // 2],
        "samples_per_s": args.data_batch_size * (len(waits) - w) / steady_total,
    }
    section.figure("result", result)
    print(
        f"  {args.data_model} {args.precision}, batch {args.data_batch_size}, {len(losses)} steps over "
        f"{epochs} epoch(s) of {len(videos) * 2} pairs: waiting for data {result['wait_fraction']:.1%} of "
        f"step time after the first {w} steps ({result['wait_fraction_all_steps']:.1%} over all; first "
        f"batch {waits[0]:.1f} s), {result['samples_per_s']:.1f} samples/s, median step "
        f"{result['median_step_ms']:.0f} ms, median wait {result['median_wait_ms']:.0f} ms",
        flush=True,
    )
    finite = all(math.isfinite(x) for x in losses)
    section.check(
        f"{args.data_steps} steps fed by the pipeline, losses finite",
        f"{len(losses)} steps",
        finite and len(losses) == args.data_steps,
    )


# ------------------------------------------------------------------------------------------ main


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(device) -> dict:
    import open_clip
    import ray
    import torch

    env = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "open_clip": open_clip.__version__,
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "device_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "device_memory_gib": props.total_memory / 2**30,
            "device_count": torch.cuda.device_count(),
            "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        }
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _git(*args: str) -> str | None:
    return _run(["git", "-C", str(ROOT), *args])


def _run(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="every section in a tiny configuration")
    p.add_argument(
        "--skip",
        nargs="+",
        action="extend",
        default=[],
        choices=SECTIONS,
        metavar="SECTION",
        help=f"sections to leave out: {', '.join(SECTIONS)}",
    )
    p.add_argument("--batch-size", type=int, help="throughput: videos per step (halved on out-of-memory)")
    p.add_argument("--models", type=lambda s: s.split(","), help="throughput: open_clip names, a,b")
    p.add_argument("--frames", type=int, help="throughput: frames per video (default: the training count)")
    p.add_argument("--warmup", type=int, help="throughput: untimed steps first")
    p.add_argument("--steps", type=int, help="throughput: timed steps")
    p.add_argument("--peak-tflops", type=float, help="the card's peak dense bf16 TFLOP/s (over the table)")
    p.add_argument("--agreement-models", type=lambda s: s.split(","))
    p.add_argument("--agreement-batch", type=int)
    p.add_argument("--data-model")
    p.add_argument("--data-videos", type=int, help="synthetic videos (at most 144)")
    p.add_argument("--data-batch-size", type=int)
    p.add_argument("--data-steps", type=int)
    p.add_argument("--data-warmup", type=int, help="first steps left out of the wait fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="for the synthetic data and cache (default: a temp folder)")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    code = check_requirements()
    if code:
        return code
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = (
            "this torch is a CPU-only build"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device: "
            f"check nvidia-smi and CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"
        )
        print(
            f"gpu_check: no CUDA GPU ({why}).\nThis script is for a GPU machine; "
            "`--device cpu --smoke --peak-tflops 1` runs its logic on the CPU.",
            file=sys.stderr,
        )
        return 2
    args.precision = "bf16" if device.type == "cuda" else "fp32"  # TrainConfig: mixed precision is for GPUs
    env = environment(device)
    print(
        f"gpu_check on {env['device_name']} ({device}); torch {env['torch']}, CUDA {env['torch_cuda']}, "
        f"open_clip {env['open_clip']}, ray {env['ray']}; {'smoke' if args.smoke else 'full'} run",
        flush=True,
    )

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-")) if temp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = {
        "agreement": (agreement, args, device),
        "checkpoint": (checkpoint_round_trip, args, device),
        "throughput": (throughput, args, device),
        "data": (data_wait, args, device, workdir),
    }
    sections = {name: Section(name) for name in SECTIONS}
    try:
        for name, (fn, *fn_args) in steps.items():
            if name in args.skip:
                print(f"\n== {name}: skipped (--skip)")
                continue
            run_section(sections[name], fn, *fn_args)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)

    ran = [s for s in sections.values() if s.status != "skipped"]
    ok = all(s.passed for s in ran)
    failed = [f"{s.name}: {c['name']}" for s in ran for c in s.checks if not c["passed"]]
    failed += [f"{s.name}: crashed ({s.error.strip().splitlines()[-1]})" for s in ran if s.status == "error"]
    report = {
        "passed": ok,
        "mode": "smoke" if args.smoke else "full",
        "command": [sys.executable, *sys.argv],
        "environment": env,
        "tolerances": TOLERANCES,
        "settings": {k: _plain(v) for k, v in vars(args).items() if k not in ("out", "workdir")},
        "seconds": round(time.perf_counter() - started, 1),
        "failed": failed,
        "sections": {name: s.as_dict() for name, s in sections.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))

    print(f"\n== summary ({report['seconds']:.0f} s, {env['device_name']})")
    for s in sections.values():
        passed = sum(c["passed"] for c in s.checks)
        print(f"  {s.name:<11} {s.status:<8} {passed}/{len(s.checks)} checks passed, {s.seconds:.0f} s")
    if "throughput" in sections and sections["throughput"].status != "skipped":
        for name in args.models:
            r = sections["throughput"].figures.get(name)
            if r:
                mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU unknown"
                mem = f", {r['peak_memory_gib']:.1f} GiB peak" if r["peak_memory_gib"] is not None else ""
                print(f"  {name}: {r['samples_per_s']:.1f} samples/s at batch {r['batch_size']}, {mfu}{mem}")
    data = sections["data"].figures.get("result")
    if data:
        print(
            f"  data wait: {data['wait_fraction']:.1%} of step time "
            f"({data['model']}, batch {data['batch_size']}, {data['samples_per_s']:.1f} samples/s)"
        )
    for line in failed:
        print(f"  FAILED {line}")
    print(f"{'ALL CHECKS PASSED' if ok else 'SOME CHECKS FAILED'}; report in {args.out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
