import copy
import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: these tests never download

import open_clip
import pytest
import safetensors.torch
import torch

from model.config import TINY_CLIP
from model.weights import WeightsError, load_clip_weights


def tiny_clip(seed: int, quick_gelu: bool = False, patch_size: int = 16) -> open_clip.CLIP:
    torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY_CLIP)
    cfg["quick_gelu"] = quick_gelu
    cfg["vision_cfg"]["patch_size"] = patch_size
    return open_clip.CLIP(**cfg).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("form", ["torch", "safetensors"])
def test_open_clip_state_dict_round_trip(tmp_path, form):
    src = tiny_clip(0)
    if form == "torch":
        path = tmp_path / "epoch_1.pt"
        wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}  # as DDP training saves it
        torch.save({"epoch": 1, "name": "run", "state_dict": wrapped}, path)
    else:
        path = tmp_path / "open_clip_model.safetensors"
        safetensors.torch.save_file(src.state_dict(), path)
    dst = tiny_clip(1)
    load_clip_weights(dst, path)
    assert_same_weights(src, dst)


def test_openai_torchscript_archive(tmp_path):
    src = tiny_clip(0, quick_gelu=True)
    # OpenAI's archives hold these three as tensors beside the weights; open_clip's are plain ints.
    del src.context_length, src.vocab_size
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        src.register_buffer(name, torch.tensor(value))
    path = tmp_path / "ViT-T-16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but OpenAI shipped it
        torch.jit.save(torch.jit.script(src), path)
    dst = tiny_clip(1, quick_gelu=True)
    load_clip_weights(dst, path)
    assert_same_weights(tiny_clip(0, quick_gelu=True), dst)
    with pytest.raises(WeightsError, match="need QuickGELU: use the -quickgelu model name"):
        load_clip_weights(tiny_clip(1, quick_gelu=False), path)


def test_openai_extra_keys_in_plain_torch_file(tmp_path):
    src = tiny_clip(0, quick_gelu=True)
    extras = {"input_resolution": 64, "context_length": 77, "vocab_size": 49408}
    path = tmp_path / "openai.pt"
    torch.save({**src.state_dict(), **{k: torch.tensor(v) for k, v in extras.items()}}, path)
    dst = tiny_clip(1, quick_gelu=True)
    load_clip_weights(dst, path)
    assert_same_weights(src, dst)


def hf_clip(act: str, patch_size: int = 16):
    from transformers import CLIPConfig, CLIPModel

    v, t = TINY_CLIP["vision_cfg"], TINY_CLIP["text_cfg"]
    text = dict(
        hidden_size=t["width"],
        intermediate_size=4 * t["width"],
        num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"],
        vocab_size=t["vocab_size"],
        max_position_embeddings=t["context_length"],
        hidden_act=act,
        eos_token_id=49407,
    )  # HF pools the first 49407, open_clip the argmax: the same EOT token
    vision = dict(
        hidden_size=v["width"],
        intermediate_size=4 * v["width"],
        num_hidden_layers=v["layers"],
        num_attention_heads=v["width"] // v["head_width"],
        patch_size=patch_size,
        image_size=v["image_size"],
        hidden_act=act,
    )
    torch.manual_seed(2)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_CLIP["embed_dim"])
    hf = CLIPModel(config).eval()
    with torch.no_grad():  # HF starts biases at zero and norms at one: shake them so q/k/v order is tested
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return hf


def features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns a ModelOutput


@pytest.mark.parametrize(
    ("act", "weights_file"), [("gelu", "model.safetensors"), ("quick_gelu", "pytorch_model.bin")]
)
def test_hugging_face_folder_gives_same_embeddings(tmp_path, act, weights_file):
    hf = hf_clip(act)
    hf.save_pretrained(tmp_path)  # transformers 5 always writes safetensors
    if weights_file == "pytorch_model.bin":
        os.remove(tmp_path / "model.safetensors")
        torch.save(hf.state_dict(), tmp_path / weights_file)
    clip = tiny_clip(1, quick_gelu=act == "quick_gelu")
    load_clip_weights(clip, tmp_path)

    tokens = open_clip.tokenize(["a photo of a cat", "a man is cooking pasta in a small kitchen"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hf_text = features(hf.get_text_features(input_ids=tokens))
        hf_image = features(hf.get_image_features(pixel_values=images))
        torch.testing.assert_close(clip.encode_text(tokens), hf_text, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(clip.encode_image(images), hf_image, atol=1e-4, rtol=1e-4)
    assert clip.logit_scale.item() == pytest.approx(hf.logit_scale.item())


def test_hugging_face_config_mismatch_names_each_difference(tmp_path):
    hf_clip("quick_gelu", patch_size=8).save_pretrained(tmp_path)
    with pytest.raises(WeightsError) as err:
        load_clip_weights(tiny_clip(1), tmp_path)  # a gelu model with patch 16
    msg = str(err.value)
    assert "hidden_act: file has 'quick_gelu', model has 'gelu'" in msg
    assert "quick_gelu=True" in msg
    assert "vision_config.patch_size: file has (8, 8), model has (16, 16)" in msg


def test_patch_size_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "patch8.safetensors"
    safetensors.torch.save_file(tiny_clip(0, patch_size=8).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        load_clip_weights(tiny_clip(1, patch_size=16), path)
    msg = str(err.value)
    assert "visual.conv1.weight: model has (128, 3, 16, 16), file has (128, 3, 8, 8)" in msg
    assert "visual.positional_embedding: model has (17, 128), file has (65, 128)" in msg
    assert "patch size 8 in the file vs 16 in the model" in msg


def test_missing_and_unknown_keys_are_errors(tmp_path):
    state = tiny_clip(0).state_dict()
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_clip_weights(tiny_clip(1), path)
    assert "1 model tensors missing from the file: logit_scale" in str(err.value)
    assert "1 file tensors the model does not have: extra.weight" in str(err.value)


def test_missing_path_lists_accepted_forms(tmp_path):
    with pytest.raises(WeightsError) as err:
        load_clip_weights(tiny_clip(1), tmp_path / "nope.pt")
    assert "do not exist" in str(err.value)
    assert "OpenAI CLIP .pt archive" in str(err.value) and "Hugging Face CLIPModel folder" in str(err.value)


@pytest.mark.parametrize("name", ["junk.pt", "junk.bin", "junk.safetensors", "folder_without_config"])
def test_unreadable_input_is_a_weights_error(tmp_path, name):
    path = tmp_path / name
    if name == "folder_without_config":
        path.mkdir()
    else:
        path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="expected a local file"):
        load_clip_weights(tiny_clip(1), path)


def test_torch_file_without_state_dict_is_a_weights_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="no state dict"):
        load_clip_weights(tiny_clip(1), path)
