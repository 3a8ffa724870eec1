import pytest
import torch
import torch.nn.functional as F

from model import create_model, tokenize
from model.caption import FREQUENT_WORDS, frequent_token_ids


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", caption_weight=0.5)


def caption_logits(head, frame_feats, tokens, clip):
    """The head's logits, captured from its output layer."""
    seen = {}
    hook = head.to_vocab.register_forward_hook(lambda mod, inp, out: seen.update(logits=out))
    loss = head.loss(frame_feats, tokens, clip)
    hook.remove()
    return loss, seen["logits"]


def test_frequent_words_weigh_a_quarter(model):
    weights = model.caption_head.class_weights
    assert len(frequent_token_ids()) == len(FREQUENT_WORDS) + 2
    assert torch.all(weights[frequent_token_ids()] == 0.25)
    dog = tokenize("dog")[0, 1]
    assert weights[dog] == 1.0
    assert (weights == 0.25).sum() == len(FREQUENT_WORDS) + 2


def test_padding_ignored_and_first_end_token_kept(model):
    head, clip = model.caption_head, model.clip
    tokens = tokenize(["the red square moves left", "a dog"])
    feats = torch.randn(2, 6, 128)
    loss, logits = caption_logits(head, feats, tokens, clip)

    # By hand: input position i predicts token i+1, for i up to the position just before the first EOT;
    # the head projects exactly those positions, in order.
    eot = tokens.max().item()
    targets = []
    for b in range(2):
        first_eot = (tokens[b] == eot).nonzero()[0].item()
        assert tokens[b, first_eot] == eot and tokens[b, first_eot + 1] == 0
        targets += tokens[b, 1 : first_eot + 1].tolist()  # the last kept target is the EOT itself
    assert targets.count(eot) == 2 and len(logits) == len(targets)
    total, weight_sum = 0.0, 0.0
    for row, target in zip(logits, torch.tensor(targets), strict=True):
        w = head.class_weights[target]
        total += w * F.cross_entropy(row, target)
        weight_sum += w
    torch.testing.assert_close(loss, total / weight_sum)

    # Whatever follows the first EOT changes nothing.
    garbage = tokens.clone()
    for b in range(2):
        first_eot = (tokens[b] == eot).nonzero()[0].item()
        garbage[b, first_eot + 1 :] = torch.randint(1, 49000, (77 - first_eot - 1,))
    torch.testing.assert_close(head.loss(feats, garbage, clip), loss)


def test_caption_loss_trains_head_not_clip_embeddings(model):
    model.zero_grad()
    tokens = tokenize(["a blue circle jumps"])
    model.caption_head.loss(torch.randn(1, 6, 128, requires_grad=True), tokens, model.clip).backward()
    assert model.clip.token_embedding.weight.grad is None
    assert model.clip.positional_embedding.grad is None
    assert model.caption_head.to_vocab.weight.grad is not None
    # The vocabulary layer starts as a copy of the token embeddings, not tied to them.
    assert model.caption_head.to_vocab.weight.data_ptr() != model.clip.token_embedding.weight.data_ptr()


def test_total_loss_is_contrastive_plus_lambda_caption(model):
    out = model(torch.randn(2, 6, 3, 64, 64), tokenize(["a red ball", "two green squares"]))
    torch.testing.assert_close(out["loss"], out["contrastive"] + 0.5 * out["caption"])


def test_lambda_zero_builds_and_runs_no_head():
    m = create_model("tiny", caption_weight=0.0)
    assert m.caption_head is None
    assert not any("caption" in n for n, _ in m.named_parameters())
    out = m(torch.randn(2, 6, 3, 64, 64), tokenize(["a red ball", "two green squares"]))
    assert set(out) == {"loss", "contrastive"}
    out["loss"].backward()
    assert m.prompt_cube.grad is not None


def test_fixed_shape_loss_equals_the_selected_rows_loss(model):
    # The GPU path projects every position and ignores the padding; the CPU path projects the kept rows.
    torch.manual_seed(3)
    head = model.caption_head
    h = torch.randn(3, 76, model.clip.transformer.width)
    targets = torch.randint(1, 400, (3, 76))
    keep = torch.arange(76)[None, :] < torch.tensor([[5], [12], [1]])
    selected = head.weighted_loss(h, targets, keep, select=True)
    fixed = head.weighted_loss(h, targets, keep, select=False)
    torch.testing.assert_close(fixed, selected)
