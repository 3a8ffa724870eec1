"""The worker's set-up: a resumed model, its optimiser state and the model on one device."""

from dataclasses import replace

import pytest
import torch

from model import ModelConfig
from orchestrator.config import RunConfig, TrainConfig
from orchestrator.training import checkpoint
from orchestrator.training.recipe import set_up_model
from orchestrator.training.step import autocast_for, forward_losses, optimiser_steps
from pipelines.config import DataConfig

RUN = RunConfig(
    model=ModelConfig(name="tiny", frames_per_group=2),
    train=TrainConfig(clip_lr=1e-3, new_lr=1e-2),
    data=DataConfig(manifest="unused.parquet"),
)


def _batch():
    g = torch.Generator().manual_seed(0)
    return {
        "frames": torch.randint(0, 256, (4, 2, 3, 64, 64), dtype=torch.uint8, generator=g),
        "tokens": torch.randint(1, 400, (4, 77), generator=g),
        "video_index": torch.arange(4),
    }


def _saved_checkpoint(folder):
    """A checkpoint after one CPU step, so that the optimiser has state to restore."""
    model, opt, state = set_up_model(RUN, torch.device("cpu"), 10, None)
    losses = forward_losses(model, _batch(), torch.device("cpu"), autocast_for("fp32", torch.device("cpu")))
    opt.backward(losses["loss"])
    opt.step(model, 1.0)
    state.step = 1
    checkpoint.save(folder, model, opt, state, "")
    return model


def _misplaced_state(opt) -> list[str]:
    """Optimiser state tensors that are not on their parameter's device ("step" lives on the CPU unless
    the optimiser is fused or capturable, by torch's design)."""
    names = {id(p): n for n, p in enumerate(p for g in opt.optimizer.param_groups for p in g["params"])}
    return [
        f"param {names[id(param)]} {key} on {value.device}, param on {param.device}"
        for param, slots in opt.optimizer.state.items()
        for key, value in slots.items()
        if torch.is_tensor(value) and key != "step" and value.device != param.device
    ]


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resumed_optimiser_state_sits_on_the_parameters_device(tmp_path):
    # "meta" stands in for a GPU here: a device other than the CPU that checkpoints are read to.
    _saved_checkpoint(tmp_path)
    model, opt, state = set_up_model(RUN, torch.device("meta"), 10, tmp_path)
    assert state.step == 1
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert opt.optimizer.state, "the optimiser state was not restored"
    assert _misplaced_state(opt) == []


def test_resumed_weights_equal_the_saved_ones(tmp_path):
    saved = _saved_checkpoint(tmp_path)
    model, opt, state = set_up_model(RUN, torch.device("cpu"), 10, tmp_path)
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert opt.scheduler.last_epoch == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_resume_on_a_gpu_steps(tmp_path):
    _saved_checkpoint(tmp_path)
    device = torch.device("cuda")
    model, opt, _ = set_up_model(RUN, device, 10, tmp_path)
    assert _misplaced_state(opt) == []
    losses = forward_losses(model, _batch(), device, autocast_for("bf16", device))
    opt.backward(losses["loss"])
    opt.step(model, 1.0)
    assert torch.isfinite(losses["loss"])



def _micro_batches(n: int, size: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "frames": torch.randint(0, 256, (size, 2, 3, 64, 64), dtype=torch.uint8, generator=g),
            "tokens": torch.randint(1, 400, (size, 77), generator=g),
            "video_index": torch.arange(i * size, (i + 1) * size),
        }
        for i in range(n)
    ]


def test_accumulated_steps_equal_one_step_per_global_batch_and_drop_the_epochs_leftovers():
    cpu, fp32 = torch.device("cpu"), autocast_for("fp32", torch.device("cpu"))
    epoch = _micro_batches(5)  # two global batches of 2 micro-batches, and one micro-batch left over
    cfg = replace(RUN.train, grad_accum=2)

    torch.manual_seed(0)
    model, opt, _ = set_up_model(replace(RUN, train=cfg), cpu, 10, None)
    steps = [list(optimiser_steps(epoch, model, model, opt, cfg, cpu, fp32, world=1)) for _ in range(2)]
    assert [len(s) for s in steps] == [2, 2]

    # The same global batches without accumulation: each step's micro-batch losses in one backward pass.
    torch.manual_seed(0)
    reference, ref_opt, _ = set_up_model(replace(RUN, train=cfg), cpu, 10, None)
    for _ in range(2):
        for first in (0, 2):
            losses = [forward_losses(reference, b, cpu, fp32)["loss"] for b in epoch[first : first + 2]]
            ref_opt.backward(sum(losses) / 2)
            ref_opt.step(reference, cfg.grad_clip)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert all(p.grad is None for p in model.parameters())  # nothing carried out of the epoch
