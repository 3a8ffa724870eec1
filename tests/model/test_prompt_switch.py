"""The vision forward of docs/model.md §2, checked against a loop-by-loop reference written from the text."""

import pytest
import torch

from model import ConfigError, create_model, tokenize
from model import prompt_switch as ps

T = 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("tiny", frames_per_group=T, caption_weight=0.0).eval()
    # A visible cube: at the official init (std ~2e-3) its effect is real but tiny.
    with torch.no_grad():
        m.prompt_cube.normal_(std=0.5)
    return m


def frames(b=1, f=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, 3, 64, 64, generator=g)


def with_random_aggregation(m):
    m2 = create_model("tiny", frames_per_group=T, caption_weight=0.0).eval()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.aggregation.attn.out_proj.weight.normal_(std=0.2)
        m2.aggregation.attn.out_proj.bias.normal_(std=0.2)
    return m2


def reference_frame_features(m, video, aggregate=True):
    """docs/model.md §2.3-2.5 with explicit loops over groups, frames and prompt slots."""
    visual = m.clip.visual
    f = video.shape[1]
    x = visual._embeds(video[0])
    x = torch.cat([x, torch.stack([m.prompt_cube[i % T] for i in range(f)])], dim=1)
    n_tok = x.shape[1] - T
    for block in visual.transformer.resblocks:
        h = block.ln_1(x)
        out = torch.empty_like(x)
        for g in range(f // T):
            for fr in range(T):
                i = g * T + fr
                # slot p of frame fr is the token that frame p held at slot fr
                switched = torch.stack([h[g * T + p, n_tok + fr] for p in range(T)])
                seq = torch.cat([h[i, :n_tok], switched])[None]
                out[i] = block.attn(seq, seq, seq, need_weights=False)[0][0]
        x = x + out
        x = x + block.mlp(block.ln_2(x))
    cls = x[:, 0]
    if aggregate:
        agg = m.aggregation.attn
        rows = []
        for g in range(f // T):
            memory = x[g * T : (g + 1) * T, n_tok:].reshape(1, T * T, -1)
            rows.append(agg(cls[g * T : (g + 1) * T][None], memory, memory, need_weights=False)[0][0])
        cls = cls + torch.cat(rows)
    return (visual.ln_post(cls) @ visual.proj)[None]


@torch.no_grad()
def test_forward_matches_reference(model):
    video = frames()
    m = with_random_aggregation(model)
    torch.testing.assert_close(
        m.frame_features(video), reference_frame_features(m, video), atol=1e-5, rtol=1e-4
    )


@torch.no_grad()
def test_aggregation_adds_nothing_at_initialisation(model):
    video = frames()
    # Per-frame output is ln_post(class token) @ proj of CLIP-with-prompts.
    torch.testing.assert_close(
        model.frame_features(video),
        reference_frame_features(model, video, aggregate=False),
        atol=1e-5,
        rtol=1e-4,
    )
    assert not torch.allclose(
        with_random_aggregation(model).frame_features(video),
        reference_frame_features(model, video, aggregate=False),
        atol=1e-3,
    )


@pytest.mark.parametrize("aggregation", ["initial", "random"])
@torch.no_grad()
def test_a_frame_changes_its_group_and_never_another(model, aggregation):
    m = model if aggregation == "initial" else with_random_aggregation(model)
    video = frames()
    changed = video.clone()
    changed[0, 1] = torch.randn(3, 64, 64)
    diff = (m.frame_features(video) - m.frame_features(changed)).abs().amax(dim=-1)[0]
    assert (diff[[0, 2, 3, 4, 5]] > 1e-4).all(), diff  # the rest of group 0 sees frame 1 through the prompts
    assert (diff[6:] < 1e-6).all(), diff  # group 1 is independent


@torch.no_grad()
def test_without_the_switch_frames_are_independent(model, monkeypatch):
    # Class and patch tokens reach another frame only through the switched prompts.
    monkeypatch.setattr(ps, "switch_prompts", lambda h, t: h)
    video = frames()
    changed = video.clone()
    changed[0, 1] = torch.randn(3, 64, 64)
    diff = (model.frame_features(video) - model.frame_features(changed)).abs().amax(dim=-1)[0]
    assert diff[1] > 1e-4
    assert (diff[[0, 2, 3, 4, 5]] < 1e-6).all(), diff


def test_switch_prompts_swaps_frame_and_slot():
    groups, tokens, width = 2, 3, 4
    h = torch.randn(groups * T, tokens + T, width)
    s = ps.switch_prompts(h, T)
    torch.testing.assert_close(s[:, :tokens], h[:, :tokens])
    for g in range(groups):
        for f in range(T):
            for p in range(T):
                assert torch.equal(s[g * T + f, tokens + p], h[g * T + p, tokens + f])


@torch.no_grad()
def test_video_embedding_depends_on_the_video_alone(model):
    video = frames(b=3, f=12)
    together = model.encode_video(video)
    alone = torch.cat([model.encode_video(video[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
    per_frame = torch.nn.functional.normalize(model.frame_features(video), dim=-1).mean(1)
    torch.testing.assert_close(
        together, torch.nn.functional.normalize(per_frame, dim=-1), atol=1e-5, rtol=1e-4
    )


@torch.no_grad()
def test_text_embeddings_are_normalised(model):
    text = model.encode_text(tokenize(["a red ball rolls left", "two squares"]))
    assert text.shape == (2, 128)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_bad_inputs_get_clear_errors(model):
    with pytest.raises(ValueError, match="not a multiple of frames_per_group=6"):
        model.encode_video(frames(f=8))
    with pytest.raises(ValueError, match="expects 64x64"):
        model.encode_video(torch.randn(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="batch, frames, 3"):
        model.encode_video(torch.randn(6, 3, 64, 64))
    with pytest.raises(ConfigError, match="unknown; allowed: tiny"):
        create_model("ViT-Q-99")
    with pytest.raises(ConfigError, match="not a plain CLIP ViT"):
        create_model("RN50")
    with pytest.raises(ConfigError, match="model.frames_per_group"):
        create_model("tiny", frames_per_group=0)
    with pytest.raises(ConfigError, match="model.caption_heads"):
        create_model("tiny", caption_heads=3)


def test_vit_b32_shapes_and_added_parameters():
    m = create_model("ViT-B-32", caption_weight=0.0).eval()
    assert m.prompt_cube.shape == (6, 6, 768)
    assert m.prompt_cube.std().item() == pytest.approx(0.02 * 768**-0.5, rel=0.1)
    seen = {}
    m.clip.visual.transformer.resblocks[0].ln_1.register_forward_hook(
        lambda mod, inp, out: seen.update(x=inp[0])
    )
    with torch.no_grad():
        out = m.encode_video(torch.randn(1, 6, 3, 224, 224))
    assert out.shape == (1, 512)
    assert seen["x"].shape == (6, 1 + 49 + 6, 768)  # class + patches + prompts per frame
    added = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("clip."))
    assert added == pytest.approx(2.4e6, rel=0.05)  # the paper's inference overhead


def test_gradient_checkpointing_gives_the_same_gradients():
    video, tokens = frames(b=2, f=6), tokenize(["a red ball", "a blue cube"])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        m = create_model("tiny", caption_weight=0.5, grad_checkpointing=checkpointing)
        m(video, tokens)["loss"].backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_logit_scale_clamped_at_ln_100(model):
    with torch.no_grad():
        model.clip.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.clip.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())


@torch.no_grad()
def test_ablations_leave_modules_out():
    torch.manual_seed(0)
    plain = create_model("tiny", caption_weight=0.0, prompts=False, aggregation=False).eval()
    assert plain.prompt_cube is None and plain.aggregation is None
    video = frames()
    # Without prompts every frame is plain CLIP: exactly open_clip's encode_image.
    torch.testing.assert_close(
        plain.frame_features(video)[0], plain.clip.encode_image(video[0]), atol=1e-5, rtol=1e-4
    )
    no_agg = create_model("tiny", caption_weight=0.0, aggregation=False)
    assert no_agg.prompt_cube is not None and no_agg.aggregation is None
    with pytest.raises(ConfigError, match="model.aggregation"):
        create_model("tiny", prompts=False)


def test_compiled_towers_give_the_same_losses_and_state_dict():
    torch.manual_seed(0)
    model = create_model("tiny", frames_per_group=2)
    frames = torch.randn(2, 4, 3, 64, 64)
    tokens = tokenize(["a red circle moves left", "a blue square moves up"])
    keys = list(model.state_dict())
    eager = model(frames, tokens)
    model.compile_towers(backend="eager")  # the graph capture without a C++ build; inductor on GPUs
    compiled = model(frames, tokens)
    assert list(model.state_dict()) == keys
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k])
