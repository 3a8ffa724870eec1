"""Text-video retrieval metrics: recall at K, median rank and mean rank, in both directions.

Text-to-video (t2v): each caption is a query and its video the one positive. Video-to-text (v2t): each video
is a query; a candidate video with several captions is scored by its best caption. Ranks start at 1 and ties
count against the query. Dual-softmax (DSL) re-normalises every score with a prior over the whole query set,
so it is not a per-query retrieval: its numbers only ever appear under separate `dsl_` keys and table rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RECALL_AT = (1, 5, 10, 50)

# Scores held at once while ranking (64 MiB in float32): a 60k x 10k evaluation never materialises a second
# full-size matrix (a comparison mask, a softmax, a grouped copy). Tests lower it to exercise the chunking.
_CHUNK_ELEMENTS = 1 << 24

# (rows, cols) -> that block of scores, in a float type wide enough for the DSL exponentials.
_Scorer = Callable[[slice, slice], torch.Tensor]


def retrieval_metrics(
    sims: torch.Tensor, caption_video: torch.Tensor, *, dsl: bool = False, dsl_temperature: float = 100.0
) -> dict[str, float]:
    """Recall at 1/5/10/50 (percent), median and mean rank for t2v and v2t retrieval.

    `sims` is (num_captions, num_videos), e.g. cosine similarities; `caption_video[c]` is the index of caption
    c's video, and every video needs at least one caption. Keys are `t2v_recall_at_1`, ..., `t2v_median_rank`,
    `t2v_mean_rank` and the same with `v2t_` (no "@": MLflow rejects it in metric names).

    Ranks are pessimistic: rank = 1 + the number of *other* candidates scoring >= the positive, so a tie never
    earns credit and a model that scores everything equal gets the worst rank (num_videos). The median of an
    even number of ranks is the mean of the two middle ones (`np.median`, as CLIP4Clip-style reference code).

    `dsl=True` adds the same twelve metrics under `dsl_t2v_` / `dsl_v2t_` on dual-softmax scores
    (`sims * softmax(sims * dsl_temperature)` over the query set: captions for t2v, videos for v2t). DSL looks
    at all queries at once, so it is NOT a per-query retrieval result and must be reported separately.
    """
    t2v, v2t = retrieval_ranks(sims, caption_video)
    metrics = _summarise("t2v_", t2v) | _summarise("v2t_", v2t)
    if dsl:
        t2v, v2t = retrieval_ranks(sims, caption_video, dsl_temperature=dsl_temperature)
        metrics |= _summarise("dsl_t2v_", t2v) | _summarise("dsl_v2t_", v2t)
    return metrics


def retrieval_ranks(
    sims: torch.Tensor, caption_video: torch.Tensor, *, dsl_temperature: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 1-based ranks: (num_captions,) for t2v and (num_videos,) for v2t, on `sims`' device.

    With `dsl_temperature` the ranks are of dual-softmax scores, which depend on the whole query set (see
    `retrieval_metrics`).
    """
    caption_video = _validate(sims, caption_video)
    if dsl_temperature is None:
        t2v_scores = v2t_scores = _raw_scorer(sims)
    else:
        if not dsl_temperature > 0 or dsl_temperature == float("inf"):
            raise ValueError(f"dsl_temperature must be a positive finite number, got {dsl_temperature}")
        # t2v queries are captions (softmax down each video's column), v2t queries videos (along each row).
        t2v_scores = _dsl_scorer(sims, dsl_temperature, dim=0)
        v2t_scores = _dsl_scorer(sims, dsl_temperature, dim=1)
    n_videos = sims.shape[1]
    return _t2v_ranks(t2v_scores, caption_video, n_videos), _v2t_ranks(v2t_scores, caption_video, n_videos)


def chance_metrics(num_videos: int) -> dict[str, float]:
    """What a random ranking of `num_videos` videos scores on t2v, in `retrieval_metrics`' keys: the one
    positive is equally likely at every rank, so R@K = K / N and the median and mean rank are (N + 1) / 2."""
    middle = (num_videos + 1) / 2
    recalls = {f"t2v_recall_at_{k}": 100 * min(k, num_videos) / num_videos for k in RECALL_AT}
    return recalls | {"t2v_median_rank": middle, "t2v_mean_rank": middle}


def format_metrics_table(metrics: dict[str, float], num_videos: int | None = None) -> str:
    """Fixed-width console table: a row per direction present (t2v, v2t, then DSL rows, marked as such),
    and with `num_videos` a last row of what chance scores on t2v over that many videos."""
    columns = [f"R@{k}" for k in RECALL_AT] + ["MdR", "MnR"]
    lines = [f"{'':<8}" + "".join(f"{name:>8}" for name in columns)]
    rows = [("t2v", "t2v_", metrics), ("v2t", "v2t_", metrics)]
    rows += [("t2v DSL", "dsl_t2v_", metrics), ("v2t DSL", "dsl_v2t_", metrics)]
    if num_videos:
        rows.append(("chance", "t2v_", chance_metrics(num_videos)))
    for label, prefix, source in rows:
        if f"{prefix}recall_at_1" not in source:
            continue
        values = [source[f"{prefix}recall_at_{k}"] for k in RECALL_AT]
        values += [source[f"{prefix}median_rank"], source[f"{prefix}mean_rank"]]
        lines.append(f"{label:<8}" + "".join(f"{value:>8.1f}" for value in values))
    if "dsl_t2v_recall_at_1" in metrics or "dsl_v2t_recall_at_1" in metrics:
        lines.append("DSL rows re-normalise over the whole query set: not a per-query retrieval result.")
    if num_videos:
        lines.append(f"chance: t2v by a random ranking of the {num_videos} videos.")
    return "\n".join(lines)


def _validate(sims: torch.Tensor, caption_video: torch.Tensor) -> torch.Tensor:
    """Raise ValueError on input making ranks meaningless; return caption_video as long, on sims' device."""
    if sims.ndim != 2 or not sims.is_floating_point():
        raise ValueError(
            f"sims must be a 2-D floating-point (num_captions, num_videos) tensor, got {sims.dtype} "
            f"of shape {tuple(sims.shape)}"
        )
    n_captions, n_videos = sims.shape
    if n_captions == 0 or n_videos == 0:
        raise ValueError(f"sims is empty (shape {tuple(sims.shape)}): nothing to rank")
    if caption_video.ndim != 1 or caption_video.shape[0] != n_captions:
        raise ValueError(
            f"caption_video must have shape ({n_captions},), one video index per row of sims, "
            f"got {tuple(caption_video.shape)}"
        )
    if caption_video.is_floating_point() or caption_video.is_complex() or caption_video.dtype == torch.bool:
        raise ValueError(f"caption_video must hold integer video indices, got {caption_video.dtype}")
    caption_video = caption_video.to(sims.device, torch.long)
    out_of_range = ((caption_video < 0) | (caption_video >= n_videos)).nonzero().flatten()
    if len(out_of_range):
        c = out_of_range[0].item()
        raise ValueError(
            f"caption {c} points to video {caption_video[c].item()}, but sims has only {n_videos} videos "
            f"(columns); {len(out_of_range)} caption(s) out of range"
        )
    without_captions = (torch.bincount(caption_video, minlength=n_videos) == 0).nonzero().flatten()
    if len(without_captions):
        raise ValueError(
            f"{len(without_captions)} video(s) have no caption, e.g. {without_captions[:5].tolist()}: "
            "every video needs at least one caption to be ranked"
        )
    for rows in _row_chunks(n_captions, n_videos):
        if not torch.isfinite(sims[rows]).all():
            raise ValueError("sims contains NaN or infinite values")
    return caption_video


def _row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // n_cols)
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _work_dtype(sims: torch.Tensor) -> torch.dtype:
    # Half-precision inputs are widened (exactly, so ties are kept) for the exponentials in DSL.
    return torch.float64 if sims.dtype == torch.float64 else torch.float32


def _raw_scorer(sims: torch.Tensor) -> _Scorer:
    dtype = _work_dtype(sims)
    return lambda rows, cols: sims[rows, cols].to(dtype)


def _dsl_scorer(sims: torch.Tensor, temperature: float, dim: int) -> _Scorer:
    """Blocks of `sims * softmax(sims * temperature, dim)`; the log-normalisers come from one chunked pass."""
    dtype = _work_dtype(sims)
    n_captions, n_videos = sims.shape
    chunks = _row_chunks(n_captions, n_videos)
    partial = [(sims[rows].to(dtype) * temperature).logsumexp(dim) for rows in chunks]
    # Along dim 0 each chunk holds part of every column's sum, so the per-chunk results combine once more.
    log_norm = torch.stack(partial).logsumexp(0) if dim == 0 else torch.cat(partial)

    def scores(rows: slice, cols: slice) -> torch.Tensor:
        block = sims[rows, cols].to(dtype)
        norm = log_norm[None, cols] if dim == 0 else log_norm[rows, None]
        return block * torch.exp(block * temperature - norm)

    return scores


def _t2v_ranks(scores: _Scorer, caption_video: torch.Tensor, n_videos: int) -> torch.Tensor:
    ranks = []
    for rows in _row_chunks(len(caption_video), n_videos):
        block = scores(rows, slice(None))
        positive = block.gather(1, caption_video[rows, None])
        # The positive is >= itself, so counting it gives exactly 1 + the others that tie or beat it.
        ranks.append((block >= positive).sum(1))
    return torch.cat(ranks)


def _v2t_ranks(scores: _Scorer, caption_video: torch.Tensor, n_videos: int) -> torch.Tensor:
    ranks = []
    for cols in _row_chunks(n_videos, len(caption_video)):  # chunks of query videos, i.e. columns of sims
        block = scores(slice(None), cols)
        width = block.shape[1]
        # groups[u, q]: query video q's score for candidate video u = u's best caption (validated: u has one).
        index = caption_video[:, None].expand_as(block)
        groups = block.new_full((n_videos, width), float("-inf")).scatter_reduce_(0, index, block, "amax")
        queries = torch.arange(cols.start, cols.start + width, device=block.device)
        positive = groups[queries, torch.arange(width, device=block.device)]
        ranks.append((groups >= positive).sum(0))
    return torch.cat(ranks)


def _summarise(prefix: str, ranks: torch.Tensor) -> dict[str, float]:
    ranks = ranks.cpu()
    n = len(ranks)
    metrics = {f"{prefix}recall_at_{k}": 100.0 * (ranks <= k).sum().item() / n for k in RECALL_AT}
    ordered = ranks.sort().values
    metrics[f"{prefix}median_rank"] = (ordered[(n - 1) // 2].item() + ordered[n // 2].item()) / 2
    metrics[f"{prefix}mean_rank"] = ranks.double().mean().item()
    return metrics
