"""Auxiliary captioning head and its weighted loss (docs/model.md §3.3-3.4).

Training only: never needed to embed a video.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig

# Words too common to carry meaning get a quarter of the weight, so the head learns the content words.
FREQUENT_WORDS = (
    "a",
    "an",
    "the",
    "and",
    "is",
    "are",
    "in",
    "on",
    "of",
    "to",
    "about",
    "this",
    "that",
    "there",
    "here",
    ".",
    ",",
)


IGNORE = -100  # a target that the cross-entropy skips: padding after the first EOT


def frequent_token_ids() -> list[int]:
    bpe = open_clip.tokenizer._tokenizer  # the CLIP BPE that open_clip.tokenize uses
    return [bpe.encoder[w + "</w>"] for w in FREQUENT_WORDS] + [bpe.sot_token_id, bpe.eot_token_id]


class CaptionHead(nn.Module):
    """A small causal transformer decoder that captions a video from its per-frame embeddings."""

    def __init__(self, clip: open_clip.CLIP, config: ModelConfig):
        super().__init__()
        width, vocab = clip.transformer.width, clip.vocab_size
        frame_dim = clip.visual.output_dim
        self.eot_id = open_clip.tokenizer._tokenizer.eot_token_id
        self.prenorm = nn.LayerNorm(width)
        layer = nn.TransformerDecoderLayer(
            width,
            config.caption_heads,
            dim_feedforward=int(width * config.clip["text_cfg"].get("mlp_ratio", 4)),
            dropout=0.0,
            batch_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, config.caption_layers, norm=nn.LayerNorm(width))
        # Only needed for CLIPs whose joint embedding width differs from the text width (not B/32, B/16).
        self.memory_proj = nn.Linear(frame_dim, width) if frame_dim != width else nn.Identity()
        # Start the vocabulary layer from CLIP's token embeddings (a copy, not tied).
        self.to_vocab = nn.Linear(width, vocab)
        with torch.no_grad():
            self.to_vocab.weight.copy_(clip.token_embedding.weight)
            self.to_vocab.bias.zero_()
        weights = torch.ones(vocab)
        weights[frequent_token_ids()] = config.frequent_word_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def loss(self, frame_feats: torch.Tensor, tokens: torch.Tensor, clip: open_clip.CLIP) -> torch.Tensor:
        """Weighted next-token cross-entropy of `tokens` given (B, F, D) frame features."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        # The teacher-forced input reuses CLIP's own embeddings, but the captioner must not train them.
        with torch.no_grad():
            x = clip.token_embedding(inputs) + clip.positional_embedding[: inputs.shape[1]]
        length = inputs.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=x.dtype)
        h = self.decoder(self.prenorm(x), self.memory_proj(frame_feats), tgt_mask=causal, tgt_is_causal=True)
        # An input at or after the first EOT is padding; the prediction *of* the first EOT is kept.
        first_eot = (tokens == self.eot_id).int().argmax(dim=1)
        keep = torch.arange(length, device=tokens.device)[None, :] < first_eot[:, None]
        # Selecting the kept rows makes a shape that only the host knows: on a GPU, a synchronisation every
        # step. There the padding is projected too, and ignored.
        return self.weighted_loss(h, targets, keep, select=not h.is_cuda)

    def weighted_loss(
        self, h: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, *, select: bool
    ) -> torch.Tensor:
        """Weighted cross-entropy of the kept positions. `select` projects only those (cheaper on a CPU:
        the vocabulary layer is the head's main cost and most of a short caption's 76 positions are
        padding); otherwise every position, with fixed shapes. Both give the same loss."""
        if select:
            return F.cross_entropy(self.to_vocab(h[keep]).float(), targets[keep], weight=self.class_weights)
        logits = self.to_vocab(h).flatten(0, 1).float()
        targets = targets.masked_fill(~keep, IGNORE).flatten()
        return F.cross_entropy(logits, targets, weight=self.class_weights, ignore_index=IGNORE)
