"""library/index.py against real FAISS: exact search is brute force, approximate recall meets its targets."""

import faiss
import numpy as np
import pytest

from library.index import (
    HNSW_RECALL_TARGET,
    IVF_PQ_RECALL_TARGET,
    IVF_SQ8_RECALL_TARGET,
    TRAIN_PER_LIST,
    IndexSpec,
    build_index,
    clustered_vectors,
    default_factory,
    held_out_recall,
    index_bytes,
    load_index,
    recall_at_k,
    save_index,
    search,
    training_sample,
)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    # On a shared 2-core machine OpenMP threads that wait on each other are 5-10x slower than one thread.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def clustered():
    return clustered_vectors(20_000, 64, seed=0)  # ~280 topics, like a small video collection


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n_queries", [1, 50])  # FAISS scans for one query, uses BLAS for a batch
def test_exact_search_is_the_brute_force_top_k(n_queries):
    vectors, queries = unit_rows(2_000, 32, seed=1), unit_rows(n_queries, 32, seed=2)
    scores, rows = search(build_index(vectors), queries, k=10)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)  # random Gaussian rows: no ties
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize(
    "factory, params, target",
    [
        ("HNSW32,Flat", {"efSearch": 128}, HNSW_RECALL_TARGET),
        ("IVF128,SQ8", {"nprobe": 32}, IVF_SQ8_RECALL_TARGET),
        # PQ16 = D/4 bytes per vector; "np": no polysemous training, which nothing here uses.
        ("IVF128,PQ16x8np", {"nprobe": 32}, IVF_PQ_RECALL_TARGET),
    ],
)
def test_approximate_recall_at_10_meets_its_target(clustered, factory, params, target):
    # 10k training vectors keep PQ's codebook training (16 k-means of 256 centroids) to a few seconds.
    spec = IndexSpec("approximate", factory, params, train_sample=10_000)
    recall = held_out_recall(clustered, spec, k=10, queries=500, seed=0)
    assert recall >= target, f"{factory} {params}: recall@10 {recall:.3f} < {target}"


def test_held_out_recall_of_a_built_index_leaves_each_query_out(clustered):
    index = build_index(clustered, IndexSpec("approximate", "HNSW32,Flat"), seed=0)
    assert index.hnsw.efSearch == 128  # the default, since FAISS's own (16) loses recall
    assert held_out_recall(clustered, index, k=10, queries=300) >= HNSW_RECALL_TARGET
    exact = build_index(clustered)
    assert held_out_recall(clustered, exact, k=10, queries=100) == 1.0
    assert recall_at_k(exact, clustered, clustered[:50], k=10) == 1.0


def test_default_factory_by_library_size():
    assert default_factory(10_000, 512) == "HNSW32,Flat"
    assert default_factory(199_999, 512) == "HNSW32,Flat"
    assert default_factory(100_000_0, 512) == "IVF4096,SQ8"  # 4 * sqrt(1M) = 4000 -> 2^12
    assert default_factory(300_000, 128) == "IVF2048,SQ8"


def test_the_training_sample_grows_with_the_inverted_lists():
    d = 32
    for nlist in (64, 4096):
        ivf = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        assert training_sample(ivf, 10**6, None) == TRAIN_PER_LIST * nlist >= 39 * nlist  # no FAISS warning
        assert training_sample(ivf, 1000, None) == 1000
        assert training_sample(ivf, 10**6, 5000) == 5000
    flat = faiss.index_factory(d, "PQ8np", faiss.METRIC_INNER_PRODUCT)
    assert training_sample(flat, 10**6, None) == 100_000


def test_default_approximate_spec_sets_nprobe():
    vectors = unit_rows(3_000, 16, seed=3)
    index = build_index(vectors, IndexSpec("approximate", "IVF64,Flat"))
    assert faiss.extract_index_ivf(index).nprobe == 32
    index = build_index(vectors, IndexSpec("approximate", "IVF64,Flat", {"nprobe": 4}))
    assert faiss.extract_index_ivf(index).nprobe == 4


@pytest.mark.parametrize(
    "spec",
    [
        IndexSpec(),
        IndexSpec("approximate", "HNSW32,Flat", {"efSearch": 64}),
        IndexSpec("approximate", "IVF64,SQ8", {"nprobe": 8}),
    ],
    ids=["exact", "hnsw", "ivf-sq8"],
)
def test_save_load_round_trip_gives_identical_results(tmp_path, spec):
    vectors, queries = unit_rows(3_000, 32, seed=4), unit_rows(20, 32, seed=5)
    index = build_index(vectors, spec)
    save_index(index, tmp_path / "sub" / "videos.faiss")
    loaded = load_index(tmp_path / "sub" / "videos.faiss")
    assert loaded.ntotal == 3_000 and index_bytes(loaded) == index_bytes(index)
    for got, want in zip(search(loaded, queries, 10), search(index, queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)  # search parameters travel with the file


def test_loading_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index file"):
        load_index(tmp_path / "absent.faiss")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"kind": "fuzzy"}, "index.kind must be exact or approximate"),
        ({"factory": "HNSW32,Flat"}, "index.factory applies only to index.kind=approximate"),
        ({"kind": "approximate", "factory": " "}, "index.factory"),
        ({"search_params": {"nprobe": 8}}, "index.search_params applies only"),
        ({"kind": "approximate", "search_params": {"nprob": 8}}, "index.search_params key must be one of"),
        ({"kind": "approximate", "search_params": {"nprobe": 0}}, "index.search_params.nprobe"),
        ({"kind": "approximate", "search_params": [("nprobe", 8)]}, "index.search_params must be a dict"),
        ({"train_sample": 0}, "index.train_sample"),
        ({"train_sample": 1.5}, "index.train_sample"),
    ],
)
def test_bad_spec_values_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        IndexSpec(**kwargs)


@pytest.mark.parametrize(
    "spec, key",
    [
        (IndexSpec("approximate", "NoSuchIndex"), "index.factory 'NoSuchIndex'"),
        (IndexSpec("approximate", "IVF16,PQ7x8np"), "index.factory 'IVF16,PQ7x8np' does not build for D=32"),
        (IndexSpec("approximate", "IVF4096,Flat"), "cannot train on 500 vectors"),
        (IndexSpec("approximate", "HNSW32,Flat", {"nprobe": 8}), "index.search_params.nprobe does not apply"),
    ],
)
def test_specs_that_cannot_build_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key):
        build_index(unit_rows(500, 32, seed=6), spec)


def test_k_larger_than_the_library_returns_every_row():
    vectors = unit_rows(7, 16, seed=7)
    for spec in (IndexSpec(), IndexSpec("approximate", "HNSW32,Flat")):
        scores, rows = search(build_index(vectors, spec), vectors[:3], k=50)
        assert rows.shape == scores.shape == (3, 7)
        assert all(sorted(r) == list(range(7)) for r in rows)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    scores, rows = search(build_index(vectors), vectors[:1], k=50)  # a lone query: the threaded mat-vec
    assert rows.shape == (1, 7) and rows.dtype == np.int64 and sorted(rows[0]) == list(range(7))
    assert rows[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0)
    scores, rows = search(build_index(np.zeros((0, 16), np.float32)), vectors[:3], k=5)  # an empty library
    assert rows.shape == scores.shape == (3, 0)


def test_missing_results_are_row_minus_one_with_score_minus_inf():
    # One list probed out of 16 holds far fewer than 200 vectors: FAISS pads with -1.
    vectors = unit_rows(400, 16, seed=8)
    index = build_index(vectors, IndexSpec("approximate", "IVF16,Flat", {"nprobe": 1}))
    scores, rows = search(index, vectors[:4], 200)
    missing = rows < 0
    assert missing.any() and (~missing).any()
    assert np.all(scores[missing] == -np.inf) and np.all(np.isfinite(scores[~missing]))
    assert all(np.all(r[:-1] >= r[1:]) for r in scores)  # found ones first, best first
