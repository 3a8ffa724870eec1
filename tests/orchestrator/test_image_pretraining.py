"""Stage 1: the tiny CLIP pretrained on single frames, an open_clip checkpoint that pretrained= loads."""

import safetensors.torch
import torch

from model import ModelConfig, build_model
from orchestrator.image_pretraining import CHANCE, image_accuracy, pretrain_tiny_clip


def test_the_image_pretrained_clip_names_things_and_loads_through_pretrained(tmp_path):
    weights = pretrain_tiny_clip(tmp_path / "tiny-image-clip.safetensors", steps=60, log=lambda line: None)
    assert image_accuracy(weights) > 3 * CHANCE  # it learnt colours and shapes from frames

    model = build_model(ModelConfig(name="tiny", pretrained=str(weights)))  # as a user loads CLIP weights
    saved = safetensors.torch.load_file(str(weights))
    loaded = model.clip.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
