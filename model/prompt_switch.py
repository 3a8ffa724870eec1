"""Prompt Switch on an open_clip CLIP: the prompt cube, the per-layer switch and prompt aggregation.

Vision forward (docs/model.md §2), for groups of T frames with N = T prompts per frame:
  patches + class token + positions -> ln_pre -> append row t of the cube to frame t
  -> every block: LN1, switch the prompt part of the LN output only, per-frame attention, residual, MLP
  -> class token += attention over the group's T*N prompt tokens -> ln_post -> projection.
Frames talk to each other only through the switched prompts, and only inside their group, so a video's
embedding is a function of the video alone and can be computed once, offline.
"""

from __future__ import annotations

import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.caption import CaptionHead
from model.config import ModelConfig
from model.losses import clamp_logit_scale, contrastive_loss


def switch_prompts(h: torch.Tensor, frames_per_group: int) -> torch.Tensor:
    """Swap (frame-in-group, prompt-slot) in the prompt part of h: frame f at slot p gets frame p's slot f.

    h is (groups * T, tokens + T, width); the last T tokens of each frame are its prompts.
    """
    t = frames_per_group
    tokens, prompts = h[:, :-t], h[:, -t:]
    prompts = prompts.unflatten(0, (-1, t)).transpose(1, 2).flatten(0, 1)
    return torch.cat([tokens, prompts], dim=1)


class PromptAggregation(nn.Module):
    """Each frame's class token attends to all T x N prompt tokens of its group (docs/model.md §2.5)."""

    def __init__(self, width: int, frames_per_group: int):
        super().__init__()
        heads = max(1, width // 64)
        if width % heads:
            raise ValueError(f"vision width {width} must divide by the aggregation heads {heads}")
        self.frames_per_group = frames_per_group
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        # Zero output projection: at initialisation the model is exactly CLIP-with-prompts.
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, cls: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        t, width = self.frames_per_group, cls.shape[-1]
        query = cls.reshape(-1, t, width)  # (groups, T, width)
        memory = prompts.reshape(-1, t * prompts.shape[1], width)  # (groups, T * N, width)
        out = self.attn(query, memory, memory, need_weights=False)[0]
        return cls + out.reshape(-1, width)


class PromptSwitchCLIP(nn.Module):
    """A CLIP whose image tower encodes videos in groups of T frames with a switched prompt cube.

    Build it with `model.build_model(config)` or `model.create_model(name, ...)`; `clip` is the open_clip
    CLIP it wraps, already holding its pretrained weights (the caption head copies its token embeddings).
    """

    def __init__(self, config: ModelConfig, clip: open_clip.CLIP):
        super().__init__()
        _check_wrappable(clip)
        self.config = config
        self.clip = clip
        t, width = config.frames_per_group, config.vision_width
        std = config.prompt_init_std if config.prompt_init_std is not None else 0.02 * width**-0.5
        # The ablation switches (config.prompts / config.aggregation) leave the module out entirely.
        self.prompt_cube = nn.Parameter(torch.randn(t, t, width) * std) if config.prompts else None
        self.aggregation = PromptAggregation(width, t) if config.aggregation else None
        # lambda = 0 means no head at all: nothing to build, run, checkpoint or optimise.
        self.caption_head = CaptionHead(self.clip, config) if config.caption_weight > 0 else None
        self.grad_checkpointing = config.grad_checkpointing

    @property
    def frames_per_group(self) -> int:
        return self.config.frames_per_group

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) normalised frames -> (B, F, D) projected per-frame features, not normalised."""
        b, f = self._check_frames(frames)
        t = self.frames_per_group
        visual = self.clip.visual
        x = visual._embeds(frames.flatten(0, 1))  # conv, class token, positions, ln_pre
        if self.prompt_cube is not None:
            # Frame t of every group holds cube[t]; prompts skip positions and ln_pre.
            prompts = self.prompt_cube.to(x.dtype).repeat(b * f // t, 1, 1)
            x = torch.cat([x, prompts], dim=1)
        for block in visual.transformer.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(self._block, block, x, use_reentrant=False)
            else:
                x = self._block(block, x)
        cls = x[:, 0]
        if self.aggregation is not None:
            cls = self.aggregation(cls, x[:, -t:])
        return (visual.ln_post(cls) @ visual.proj).reshape(b, f, -1)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # The switch touches only the attention input; the residual stream keeps its own layout, so the
        # output at (frame f, slot p) lands on x at (f, p) without being transposed back.
        if self.prompt_cube is None:  # plain CLIP: every frame on its own
            return block(x)
        h = switch_prompts(block.ln_1(x), self.frames_per_group)
        x = x + block.ls_1(block.attn(h, h, h, need_weights=False)[0])
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def compile_towers(self, **options) -> None:
        """torch.compile the video and the text tower in place (state dict unchanged). The loss, with its
        collectives, stays eager: a graph break there would cost more than it saves."""
        self.frame_features = torch.compile(self.frame_features, **options)
        self.encode_text = torch.compile(self.encode_text, **options)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) -> (B, D) L2-normalised video embeddings: mean of normalised frame embeddings."""
        return _video_embedding(self.frame_features(frames))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, D) L2-normalised text embeddings (plain CLIP text tower)."""
        return self.clip.encode_text(tokens, normalize=True)

    def forward(
        self,
        frames: torch.Tensor,
        tokens: torch.Tensor,
        video_ids: torch.Tensor | None = None,
        *,
        equal_batches: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Training losses for a batch of (video, caption) pairs.

        With torch.distributed initialised the contrastive negatives are the global batch; `video_ids` keeps
        two captions of one video (on different workers, say) out of each other's negatives, and
        `equal_batches` says every rank's batch has this size.
        """
        frame_feats = self.frame_features(frames)
        gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        text, video = self.encode_text(tokens), _video_embedding(frame_feats)
        losses = {
            "contrastive": contrastive_loss(
                text,
                video,
                self.clip.logit_scale,
                gather=gather,
                video_ids=video_ids,
                equal_sizes=equal_batches,
            )
        }
        loss = losses["contrastive"]
        if self.caption_head is not None:
            losses["caption"] = self.caption_head.loss(frame_feats, tokens, self.clip)
            loss = loss + self.config.caption_weight * losses["caption"]
        losses["loss"] = loss
        return losses

    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        """CLIP's temperature cap, applied after every optimiser step."""
        clamp_logit_scale(self.clip, max_scale)

    def _check_frames(self, frames: torch.Tensor) -> tuple[int, int]:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (batch, frames, 3, height, width); got {tuple(frames.shape)}")
        b, f, _, h, w = frames.shape
        if f % self.frames_per_group:
            raise ValueError(
                f"{f} frames per video is not a multiple of frames_per_group={self.frames_per_group}: "
                "the model encodes independent groups of that many frames"
            )
        size = self.config.image_size
        if (h, w) != (size, size):
            raise ValueError(f"frames are {h}x{w}; {self.config.name} expects {size}x{size}")
        return b, f


def _video_embedding(frame_feats: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(frame_feats, dim=-1).mean(dim=1), dim=-1)


def _check_wrappable(clip: open_clip.CLIP) -> None:
    # clip_config() admits only plain ViTs; this guards against an open_clip upgrade changing the blocks.
    blocks = clip.visual.transformer.resblocks
    if not all(
        isinstance(b, open_clip.transformer.ResidualAttentionBlock) and b.attn.batch_first for b in blocks
    ):
        raise TypeError("Prompt Switch expects open_clip ResidualAttentionBlocks with batch-first attention")
