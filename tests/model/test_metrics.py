import statistics

import pytest
import torch

from model import metrics
from model.metrics import RECALL_AT, chance_metrics, format_metrics_table, retrieval_metrics, retrieval_ranks


def _ranks(sims, caption_video, **kwargs):
    t2v, v2t = retrieval_ranks(torch.tensor(sims), torch.tensor(caption_video), **kwargs)
    return t2v.tolist(), v2t.tolist()


# Rows are captions, columns videos; caption i belongs to video i.
ONE_CAPTION_EACH = [
    [0.9, 0.1, 0.2, 0.2],  # own 0.9 is the best: rank 1
    [0.8, 0.7, 0.1, 0.0],  # 0.8 beats own 0.7: rank 2
    [0.1, 0.6, 0.5, 0.9],  # 0.6 and 0.9 beat own 0.5: rank 3
    [0.4, 0.5, 0.6, 0.3],  # all three others beat own 0.3: rank 4
]
# v2t: video v's query scores candidate u by sims[u, v], i.e. reads column v.
#   v0: [0.9, 0.8, 0.1, 0.4] own 0.9 -> 1     v1: [0.1, 0.7, 0.6, 0.5] own 0.7 -> 1
#   v2: [0.2, 0.1, 0.5, 0.6] own 0.5 -> 2     v3: [0.2, 0.0, 0.9, 0.3] own 0.3 -> 2


def test_one_caption_per_video():
    assert _ranks(ONE_CAPTION_EACH, [0, 1, 2, 3]) == ([1, 2, 3, 4], [1, 1, 2, 2])
    m = retrieval_metrics(torch.tensor(ONE_CAPTION_EACH), torch.arange(4))
    # t2v ranks 1,2,3,4: one of four at rank 1; even count, so the median is (2 + 3) / 2.
    assert m["t2v_recall_at_1"] == 25.0
    assert m["t2v_recall_at_5"] == m["t2v_recall_at_10"] == m["t2v_recall_at_50"] == 100.0
    assert m["t2v_median_rank"] == 2.5
    assert m["t2v_mean_rank"] == 2.5
    # v2t ranks 1,1,2,2: median (1 + 2) / 2, mean 6 / 4.
    assert m["v2t_recall_at_1"] == 50.0
    assert m["v2t_median_rank"] == 1.5
    assert m["v2t_mean_rank"] == 1.5
    assert not any("@" in key or key.startswith("dsl") for key in m)
    assert len(m) == 12


def test_several_captions_per_video():
    sims = [
        [0.2, 0.75, 0.1],  # c0 of v0: 0.75 beats own 0.2 -> rank 2
        [0.8, 0.3, 0.4],  # c1 of v0: rank 1
        [0.6, 0.7, 0.9],  # c2 of v1: 0.9 beats own 0.7 -> rank 2
        [0.3, 0.2, 0.1],  # c3 of v2: 0.3 and 0.2 beat own 0.1 -> rank 3
        [0.1, 0.0, 0.6],  # c4 of v2: rank 1
    ]
    caption_video = [0, 0, 1, 2, 2]
    # v2t groups, best caption per candidate video (columns = query videos):
    #   v0 = max(c0, c1) = [0.8, 0.75, 0.4];  v1 = c2 = [0.6, 0.7, 0.9];  v2 = max(c3, c4) = [0.3, 0.2, 0.6]
    #   query v0 reads [0.8, 0.6, 0.3]  -> 1
    #   query v1 reads [0.75, 0.7, 0.2] -> 2 (v0's best caption c0 beats it; the group's mean would not)
    #   query v2 reads [0.4, 0.9, 0.6]  -> 2 (own score is c4's 0.6, not c3's 0.1)
    assert _ranks(sims, caption_video) == ([2, 1, 2, 3, 1], [1, 2, 2])
    m = retrieval_metrics(torch.tensor(sims), torch.tensor(caption_video))
    assert m["t2v_recall_at_1"] == 40.0
    assert m["t2v_median_rank"] == 2.0  # sorted 1,1,2,2,3
    assert m["t2v_mean_rank"] == pytest.approx(9 / 5)
    assert m["v2t_recall_at_1"] == pytest.approx(100 / 3)
    assert m["v2t_median_rank"] == 2.0
    assert m["v2t_mean_rank"] == pytest.approx(5 / 3)


def test_all_equal_scores_get_the_worst_rank():
    # 8 videos, 10 captions (v0 and v1 have two): every candidate ties, and ties count against the query.
    sims = torch.full((10, 8), 0.5)
    caption_video = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
    m = retrieval_metrics(sims, caption_video, dsl=True)
    for prefix in ("t2v_", "v2t_", "dsl_t2v_", "dsl_v2t_"):
        assert m[f"{prefix}recall_at_1"] == m[f"{prefix}recall_at_5"] == 0.0
        assert m[f"{prefix}recall_at_10"] == 100.0
        assert m[f"{prefix}median_rank"] == m[f"{prefix}mean_rank"] == 8.0


def test_partial_ties_count_against_the_query():
    sims = [
        [0.5, 0.5, 0.5, 0.9],  # c0: v1, v2 tie with own 0.5 and v3 beats it -> rank 4
        [0.0, 0.9, 0.0, 0.0],
        [0.0, 0.0, 0.9, 0.0],
        [0.0, 0.0, 0.0, 0.9],
    ]
    # v2t: query v3 reads column 3 = [0.9, 0, 0, 0.9]: v0 ties its own 0.9 -> rank 2; v0..v2 win clearly.
    assert _ranks(sims, [0, 1, 2, 3]) == ([4, 1, 1, 1], [1, 1, 1, 2])
    m = retrieval_metrics(torch.tensor(sims), torch.arange(4))
    assert m["t2v_mean_rank"] == 7 / 4
    assert m["v2t_mean_rank"] == 5 / 4
    assert m["t2v_recall_at_1"] == m["v2t_recall_at_1"] == 75.0


def _sims_with_t2v_ranks(ranks):
    # Caption i belongs to video i (score 0); exactly rank - 1 other videos score 1, the rest -1.
    n = len(ranks)
    sims = torch.full((n, n), -1.0)
    for i, rank in enumerate(ranks):
        sims[i, [u for u in range(n) if u != i][: rank - 1]] = 1.0
        sims[i, i] = 0.0
    return sims, torch.arange(n)


def test_recall_thresholds_include_the_boundary():
    ranks = [1, 5, 6, 10, 11, 50, 51, 60] + [1] * 52
    sims, caption_video = _sims_with_t2v_ranks(ranks)
    assert retrieval_ranks(sims, caption_video)[0].tolist() == ranks
    m = retrieval_metrics(sims, caption_video)
    # Of 60: rank <= 1: the 53 ones; <= 5 adds the 5; <= 10 adds 6 and 10; <= 50 adds 11 and 50.
    assert m["t2v_recall_at_1"] == pytest.approx(100 * 53 / 60)
    assert m["t2v_recall_at_5"] == pytest.approx(100 * 54 / 60)
    assert m["t2v_recall_at_10"] == pytest.approx(100 * 56 / 60)
    assert m["t2v_recall_at_50"] == pytest.approx(100 * 58 / 60)
    assert m["t2v_median_rank"] == 1.0
    assert m["t2v_mean_rank"] == pytest.approx((1 + 5 + 6 + 10 + 11 + 50 + 51 + 60 + 52) / 60)


# v2 is a "hub": closer to every caption than the captions' own videos are, at least for c0 and c1.
HUB = [
    [0.5, 0.1, 0.6],  # c0 of v0: the hub's 0.6 beats own 0.5 -> rank 2
    [0.1, 0.5, 0.6],  # c1 of v1: likewise rank 2
    [0.1, 0.1, 0.7],  # c2 of v2: rank 1
]


def test_dsl_demotes_a_hub_video_and_is_reported_separately():
    sims, caption_video = torch.tensor(HUB), torch.arange(3)
    # DSL t2v weights each score by a softmax (temperature 100) over the captions in its video's column.
    # Column v2 has logits 60, 60, 70, so c2 takes almost all of it and c0, c1 get e^-10 ~ 4.5e-5 each:
    # c0's hub score drops to 0.6 * 4.5e-5 while its own (column v0: 50, 10, 10) keeps ~0.5 -> rank 1.
    assert _ranks(HUB, [0, 1, 2])[0] == [2, 2, 1]
    assert _ranks(HUB, [0, 1, 2], dsl_temperature=100.0)[0] == [1, 1, 1]

    plain = retrieval_metrics(sims, caption_video)
    with_dsl = retrieval_metrics(sims, caption_video, dsl=True)
    assert plain["t2v_recall_at_1"] == pytest.approx(100 / 3)
    assert with_dsl["dsl_t2v_recall_at_1"] == 100.0
    assert with_dsl["dsl_t2v_mean_rank"] == 1.0
    # The plain keys do not change when DSL is requested; DSL only adds its own 12 keys.
    assert {k: v for k, v in with_dsl.items() if not k.startswith("dsl_")} == plain
    assert sorted(with_dsl) == sorted([*plain, *(f"dsl_{k}" for k in plain)])


@pytest.mark.parametrize(
    ("sims_shape", "caption_video", "message"),
    [
        ((3, 3), [0, 1, 3], "caption 2 points to video 3"),
        ((3, 3), [0, -1, 2], "caption 1 points to video -1"),
        ((3, 3), [0, 0, 2], r"1 video\(s\) have no caption, e.g. \[1\]"),
        ((3, 3), [0, 1], r"caption_video must have shape \(3,\)"),
        ((4, 3), [[0, 1, 2, 2]], r"caption_video must have shape \(4,\)"),
        ((3,), [0, 1, 2], "2-D"),
        ((3, 3), [0.0, 1.0, 2.0], "integer"),
    ],
)
def test_invalid_inputs_raise(sims_shape, caption_video, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(torch.rand(sims_shape), torch.tensor(caption_video))


def test_non_finite_scores_and_bad_temperature_raise():
    sims = torch.eye(3)
    sims[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sims, torch.arange(3))
    with pytest.raises(ValueError, match="dsl_temperature"):
        retrieval_metrics(torch.eye(3), torch.arange(3), dsl=True, dsl_temperature=0.0)


def _naive_ranks(scores, caption_video):
    s, own = scores.tolist(), caption_video.tolist()
    n_videos = len(s[0])
    t2v = [1 + sum(row[u] >= row[own[c]] for u in range(n_videos) if u != own[c]) for c, row in enumerate(s)]
    v2t = []
    for v in range(n_videos):
        best = [max(s[c][v] for c in range(len(s)) if own[c] == u) for u in range(n_videos)]
        v2t.append(1 + sum(best[u] >= best[v] for u in range(n_videos) if u != v))
    return t2v, v2t


def _naive_metrics(prefix, ranks):
    out = {f"{prefix}recall_at_{k}": 100 * sum(r <= k for r in ranks) / len(ranks) for k in RECALL_AT}
    out[f"{prefix}median_rank"] = statistics.median(ranks)
    out[f"{prefix}mean_rank"] = statistics.mean(ranks)
    return out


@pytest.mark.parametrize("chunk_elements", [1, 1000, metrics._CHUNK_ELEMENTS], ids=["1", "1000", "default"])
def test_matches_a_naive_loop(monkeypatch, chunk_elements):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    n_captions, n_videos = 300, 100
    # Every video gets a caption, the rest are spread at random, then the rows are shuffled.
    extra = torch.randint(n_videos, (n_captions - n_videos,), generator=gen)
    caption_video = torch.cat([torch.arange(n_videos), extra])[torch.randperm(n_captions, generator=gen)]
    sims = torch.rand(n_captions, n_videos, generator=gen, dtype=torch.float64) * 2 - 1

    # Rounded to one decimal, so ties are everywhere.
    tied = sims.round(decimals=1)
    t2v, v2t = _naive_ranks(tied, caption_video)
    got_t2v, got_v2t = retrieval_ranks(tied, caption_video)
    assert (got_t2v.tolist(), got_v2t.tolist()) == (t2v, v2t)
    expected = _naive_metrics("t2v_", t2v) | _naive_metrics("v2t_", v2t)
    assert retrieval_metrics(tied, caption_video) == pytest.approx(expected)

    # DSL against the literal formulas, on untied scores so two summation orders cannot split a tie.
    temperature = 100.0
    dsl_t2v, _ = _naive_ranks(sims * torch.softmax(sims * temperature, dim=0), caption_video)
    _, dsl_v2t = _naive_ranks(sims * torch.softmax(sims * temperature, dim=1), caption_video)
    got = retrieval_metrics(sims, caption_video, dsl=True, dsl_temperature=temperature)
    expected = _naive_metrics("dsl_t2v_", dsl_t2v) | _naive_metrics("dsl_v2t_", dsl_v2t)
    assert {k: v for k, v in got.items() if k.startswith("dsl_")} == pytest.approx(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    gen = torch.Generator().manual_seed(1)
    sims = torch.rand(500, 200, generator=gen).round(decimals=2)
    caption_video = torch.cat([torch.arange(200), torch.randint(200, (300,), generator=gen)])
    expected = retrieval_metrics(sims, caption_video, dsl=True)
    assert retrieval_metrics(sims.cuda(), caption_video.cuda(), dsl=True) == pytest.approx(expected)


def test_table_shows_the_numbers_and_labels_dsl():
    plain = format_metrics_table(retrieval_metrics(torch.tensor(ONE_CAPTION_EACH), torch.arange(4)))
    lines = plain.splitlines()
    assert lines[0].split() == ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR"]
    assert lines[1].split() == ["t2v", "25.0", "100.0", "100.0", "100.0", "2.5", "2.5"]
    assert lines[2].split() == ["v2t", "50.0", "100.0", "100.0", "100.0", "1.5", "1.5"]
    assert len(lines) == 3 and "DSL" not in plain

    with_dsl = format_metrics_table(retrieval_metrics(torch.tensor(HUB), torch.arange(3), dsl=True))
    lines = with_dsl.splitlines()
    assert lines[3].split() == ["t2v", "DSL", "100.0", "100.0", "100.0", "100.0", "1.0", "1.0"]
    assert lines[4].startswith("v2t DSL")
    assert "whole query set" in lines[5]


def test_chance_is_what_random_scores_get():
    gen = torch.Generator().manual_seed(3)
    videos, captions = 40, 20_000
    random = retrieval_metrics(torch.rand(captions, videos, generator=gen), torch.arange(captions) % videos)
    chance = chance_metrics(videos)
    assert chance["t2v_recall_at_1"] == 2.5 and chance["t2v_recall_at_50"] == 100.0
    for key, value in chance.items():
        assert random[key] == pytest.approx(value, rel=0.05), key


def test_table_ends_with_chance_over_the_videos_ranked():
    metrics = retrieval_metrics(torch.tensor(ONE_CAPTION_EACH), torch.arange(4))
    lines = format_metrics_table(metrics, num_videos=4).splitlines()
    assert lines[3].split() == ["chance", "25.0", "100.0", "100.0", "100.0", "2.5", "2.5"]
    assert lines[4] == "chance: t2v by a random ranking of the 4 videos."
