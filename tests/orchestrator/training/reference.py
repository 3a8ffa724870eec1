"""Retrieval metrics computed the plainest way, to hold the distributed paths to: one process, one video at
a time, decoded with decord from the file, the whole score matrix, `retrieval_metrics`."""

from pathlib import Path

import pyarrow.compute as pc
import torch

from model import build_model, normalize_frames, retrieval_metrics, tokenize
from orchestrator.config import RunConfig
from orchestrator.training import checkpoint
from pipelines.decode import read_sampled_frames
from pipelines.manifest import read_manifest
from pipelines.sampling import frame_indices
from pipelines.transforms import eval_transform


@torch.no_grad()
def reference_metrics(run: RunConfig, weights: Path, split: str) -> dict[str, float]:
    model = build_model(run.model).eval()
    checkpoint.load_weights(weights, model)
    rows = read_manifest(run.data.manifest)
    rows = rows.filter(pc.equal(rows["split"], split))
    paths = rows["video_path"].to_pylist()
    order = list(dict.fromkeys(paths))
    videos = []
    for path in order:
        raw = read_sampled_frames(
            path,
            lambda n: frame_indices(n, run.model.frames_per_group, run.data.eval_groups),
            cache_path=None,
            short_side=run.data.cache_short_side,
        )
        frames = torch.from_numpy(eval_transform(raw, run.model.image_size))[None]
        videos.append(model.encode_video(normalize_frames(frames))[0])
    texts = model.encode_text(tokenize(rows["caption"].to_pylist()))
    caption_video = torch.tensor([order.index(p) for p in paths])
    return retrieval_metrics(texts @ torch.stack(videos).T, caption_video)
