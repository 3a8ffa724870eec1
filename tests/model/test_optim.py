import pytest
import torch

from model import create_model, parameter_groups


@pytest.fixture(scope="module")
def model():
    return create_model("tiny")


def names_in(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("official", [False, True])
def test_every_trainable_parameter_in_exactly_one_group(model, official):
    groups = parameter_groups(model, clip_lr=1e-6, new_lr=1e-5, weight_decay=0.2, official_grouping=official)
    assert [g["name"] for g in groups] == ["clip", "new"]
    assert [g["lr"] for g in groups] == [1e-6, 1e-5]
    clip, new = names_in(model, groups[0]), names_in(model, groups[1])
    assert not clip & new
    assert clip | new == {n for n, _ in model.named_parameters()}
    assert "prompt_cube" in new
    assert any(n.startswith("caption_head.") for n in new)
    allowed = ("clip.", "aggregation.") if official else ("clip.",)
    assert all(n.startswith(allowed) for n in clip)


def test_aggregation_rate_default_vs_official(model):
    ours = parameter_groups(model, clip_lr=1e-6, new_lr=1e-5, weight_decay=0.2)
    official = parameter_groups(model, clip_lr=1e-6, new_lr=1e-5, weight_decay=0.2, official_grouping=True)
    assert "aggregation.attn.in_proj_weight" in names_in(model, ours[1])
    assert "aggregation.attn.in_proj_weight" in names_in(model, official[0])
    torch.optim.AdamW(ours, betas=(0.9, 0.999), eps=1e-6)  # the groups are valid optimiser input


def test_frozen_parameters_left_out(model):
    model.clip.visual.conv1.weight.requires_grad_(False)
    try:
        groups = parameter_groups(model, clip_lr=1e-6, new_lr=1e-5, weight_decay=0.2)
        assert "clip.visual.conv1.weight" not in names_in(model, groups[0])
    finally:
        model.clip.visual.conv1.weight.requires_grad_(True)
