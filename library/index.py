"""The video library's nearest-neighbour index: the one module that knows FAISS.

Video embeddings are L2-normalised float32 rows of dimension D, so inner product is cosine similarity.
A library of n videos is one (n, D) matrix; the index identifies a video by its row (0..n-1) and the
library keeps row -> record. Two kinds of index:

- exact: `IndexFlatIP`, a scan of every row per query (memory-bandwidth bound, no training, no recall loss);
- approximate: any FAISS `index_factory` string, trained on a seeded sample, with its search parameters
  (nprobe, efSearch) set at build time. Measure what it loses with `held_out_recall` before relying on it.

Loading reads FAISS's own binary format (`faiss.read_index`): nothing is unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

KINDS = ("exact", "approximate")
# The search-time knobs we let a spec set (names as faiss.ParameterSpace knows them): how many IVF lists to
# scan, how wide the HNSW beam is (also for an HNSW coarse quantizer), how many candidates a Refine re-ranks.
SEARCH_PARAMS = ("nprobe", "efSearch", "quantizer_efSearch", "k_factor_rf")
# Below this many vectors the default approximate index is a graph over the raw vectors; above it, an
# inverted file over 8-bit scalar-quantised vectors (see default_factory for why).
HNSW_MAX_VECTORS = 200_000
DEFAULT_NPROBE = 32
# Training vectors per inverted list: FAISS warns below 39 and samples itself down above 256.
TRAIN_PER_LIST = 64
TRAIN_SAMPLE_OTHER = 100_000  # an index that trains without lists (a plain PQ)
DEFAULT_EF_SEARCH = 128

# Recall@10 against exact search that an approximate index must reach on the generated clustered vectors
# (clustered_vectors), shared by tests/library/test_index.py and bench/search.py. Measured on 20k x 64 (seeds
# 0-3, 500 held-out queries): HNSW 1.000, IVF128,SQ8 0.988, IVF128,PQ16x8 0.70-0.71; on 100k x 512: HNSW
# 0.999, IVF1024,SQ8 0.994. The margins absorb other seeds, sizes and multi-threaded HNSW construction.
HNSW_RECALL_TARGET = 0.95  # HNSW32,Flat with efSearch 128
IVF_SQ8_RECALL_TARGET = 0.95  # IVF{nlist},SQ8 with nprobe 32
IVF_PQ_RECALL_TARGET = 0.60  # IVF{nlist},PQ{D/4}x8 with nprobe 32: 16x smaller codes lose the fine ranking
DEFAULT_RECALL_TARGET = min(HNSW_RECALL_TARGET, IVF_SQ8_RECALL_TARGET)  # what default_factory picks


@dataclass(frozen=True)
class IndexSpec:
    """What index to build. kind "exact" is IndexFlatIP; "approximate" is `factory` (None: default_factory).

    search_params override the defaults (nprobe 32 for IVF, efSearch 128 for HNSW); train_sample is how many
    vectors, drawn with the build seed, train the IVF centroids and quantiser codebooks (None:
    `TRAIN_PER_LIST` per inverted list, so that the sample grows with nlist).
    """

    kind: str = "exact"
    factory: str | None = None
    search_params: dict = field(default_factory=dict)
    train_sample: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index.kind must be exact or approximate, got {self.kind!r}")
        if self.factory is not None:
            if self.kind == "exact":
                raise ValueError("index.factory applies only to index.kind=approximate (exact: IndexFlatIP)")
            if not isinstance(self.factory, str) or not self.factory.strip():
                raise ValueError(
                    f"index.factory must be a FAISS index_factory string such as 'HNSW32,Flat' or "
                    f"'IVF1024,SQ8', or None for the default, got {self.factory!r}"
                )
        if not isinstance(self.search_params, dict):
            raise ValueError(f"index.search_params must be a dict, got {type(self.search_params).__name__}")
        if self.kind == "exact" and self.search_params:
            raise ValueError("index.search_params applies only to index.kind=approximate")
        for name, value in self.search_params.items():
            if name not in SEARCH_PARAMS:
                allowed = ", ".join(SEARCH_PARAMS)
                raise ValueError(f"index.search_params key must be one of {allowed}, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
                raise ValueError(f"index.search_params.{name} must be a number >= 1, got {value!r}")
        sample = self.train_sample
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
            raise ValueError(f"index.train_sample must be a positive integer or None, got {sample!r}")


def default_factory(n: int, d: int) -> str:
    """The approximate index for n vectors of dimension d.

    - n < 200k: "HNSW32,Flat". A graph over the raw vectors: no training, recall@10 ~0.99 at efSearch 128,
      ~270 bytes per vector on top of the floats; its build cost (~20 s per 100k vectors at D=512 on 2 cores)
      and memory grow with n, which is what stops it being the default beyond this size.
    - otherwise "IVF{nlist},SQ8": nlist ~ 4*sqrt(n) rounded to a power of two (4096 at 1M), so nprobe 32
      scans under 1 % of the vectors, each stored in 8 bits per dimension (D + 8 bytes per vector: 4x smaller
      than float32). Product quantisation ("IVF4096,PQ128x8", 136 bytes) was measured and rejected as the
      default: on clustered vectors at 100k x 512 with nprobe 32 it reached recall@10 0.81 (PQ64x8: 0.64)
      where SQ8 reached 0.99. Name a PQ factory explicitly where memory matters more than recall, and end its
      PQ with "np" ("IVF4096,PQ128x8np"): otherwise FAISS also runs polysemous training, minutes of work
      that only a Hamming-threshold search uses.
    """
    if n < HNSW_MAX_VECTORS:
        return "HNSW32,Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    return f"IVF{nlist},SQ8"


def default_search_params(index: faiss.Index) -> dict:
    """nprobe for an inverted file, efSearch for an HNSW graph: FAISS's defaults (1 and 16) lose recall."""
    params = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params["nprobe"] = min(DEFAULT_NPROBE, ivf.nlist)
    if isinstance(index, faiss.IndexHNSW):
        params["efSearch"] = DEFAULT_EF_SEARCH
    return params


def training_sample(index: faiss.Index, n: int, asked: int | None) -> int:
    """How many of n vectors train `index`: as asked, else `TRAIN_PER_LIST` per inverted list."""
    if asked is None:
        ivf = faiss.try_extract_index_ivf(index)
        asked = TRAIN_PER_LIST * ivf.nlist if ivf is not None else TRAIN_SAMPLE_OTHER
    return min(n, asked)


def set_threads(threads: int | None) -> None:
    """FAISS's OpenMP thread count for this process (None: leave it as it is)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        faiss.omp_set_num_threads(threads)


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)  # FAISS takes C-contiguous float32 only
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what} must be an (n, D) matrix, got shape {x.shape}")
    return x


def _faiss_error(e: RuntimeError) -> str:
    return str(e).strip().splitlines()[-1]  # FAISS prefixes its message with the C++ location


def build_index(
    vectors: np.ndarray, spec: IndexSpec | None = None, *, seed: int = 0, threads: int | None = None
) -> faiss.Index:
    """An index over `vectors` (row i is id i), built as `spec` says (default: exact).

    An exact index may be empty (a library with no videos yet); an approximate one needs vectors to train on.
    """
    spec = spec or IndexSpec()
    set_threads(threads)
    vectors = _as_matrix(vectors, "vectors")
    n, d = vectors.shape
    if spec.kind == "exact":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index
    if n == 0:
        raise ValueError("an approximate index needs vectors to train on, got none (use index.kind=exact)")

    factory = spec.factory or default_factory(n, d)
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"index.factory {factory!r} does not build for D={d}: {_faiss_error(e)}") from None
    if not index.is_trained:
        # A seeded sample, sorted so the copy reads the matrix front to back.
        sample = training_sample(index, n, spec.train_sample)
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        try:
            index.train(vectors[rows])
        except RuntimeError as e:
            raise ValueError(
                f"index.factory {factory!r} cannot train on {len(rows)} vectors "
                f"(index.train_sample={spec.train_sample}, n={n}): {_faiss_error(e)}"
            ) from None
    index.add(vectors)
    space = faiss.ParameterSpace()
    for name, value in (default_search_params(index) | spec.search_params).items():
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise ValueError(f"index.search_params.{name} does not apply to {factory!r}") from None
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (n_queries, min(k, ntotal)), best first.

    An approximate index can find fewer than k vectors (an IVF probe over near-empty lists): those slots keep
    their place with row -1 and score -inf, so they sort last and `rows >= 0` selects what was found.
    """
    set_threads(threads)
    queries = _as_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the index {index.d}")
    k = min(k, index.ntotal)
    if k < 1:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    if len(queries) == 1 and type(index) is faiss.IndexFlatIP:
        return _exact_one(index, queries, k)
    # FAISS (1.15) scans the whole matrix once per query while n_queries * D < this threshold (128000 by
    # default), so at D=512 a batch of 64 read a 100k library 64 times: 980 ms against 72 ms through BLAS
    # (measured, one thread). Only a lone query keeps the scan, which is as fast as BLAS's mat-vec or faster.
    faiss.cvar.distance_compute_blas_threshold = 2 * index.d
    scores, rows = index.search(queries, k)
    scores[rows < 0] = -np.inf  # FAISS pads with -FLT_MAX, which would compare as a (very bad) real score
    return scores, rows


def _exact_one(index: faiss.IndexFlatIP, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query, exactly: a mat-vec over the stored vectors on all of torch's threads, then the top k.

    FAISS scans for a lone query on one thread, 1.3x the time of reading the matrix on one core but 2.2x
    (at 1M vectors) of reading it on two; a threaded mat-vec reads it at the speed of all cores.
    """
    import torch

    stored = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    scores = torch.from_numpy(stored) @ torch.from_numpy(query[0])  # a view: nothing is copied
    best = torch.topk(scores, k)
    return best.values.numpy()[None], best.indices.numpy().astype(np.int64)[None]


def recall_at_k(
    approx_index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    *,
    exact: faiss.Index | None = None,
    threads: int | None = None,
) -> float:
    """Fraction of the exact top-k (IndexFlatIP over `vectors`) that `approx_index` also returns.

    `exact`: that IndexFlatIP when the caller has already built it (it holds a copy of the vectors).
    """
    exact = exact if exact is not None else build_index(vectors, threads=threads)
    _, truth = search(exact, queries, k, threads=threads)
    _, found = search(approx_index, queries, k)
    return _overlap(found, truth, truth.shape[1])


def _overlap(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True))  # -1 never in truth
    return hits / (len(truth) * k)


def held_out_recall(
    vectors: np.ndarray,
    spec_or_index: IndexSpec | faiss.Index,
    k: int = 10,
    queries: int = 1000,
    seed: int = 0,
    *,
    exact: faiss.Index | None = None,
    threads: int | None = None,
) -> float:
    """Recall@k against exact search, with a seeded sample of the library's own vectors as the queries.

    Given a spec, the sample is held out: the index is built on the other vectors and the sample queries it.
    Given an index built on all of `vectors`, each query's own row is dropped from both result lists (a query
    trivially finds itself), so recall is over its k nearest *other* vectors; `exact`, an IndexFlatIP over
    all of `vectors` that the caller already has, then saves building one.
    """
    vectors = _as_matrix(vectors, "vectors")
    n = len(vectors)
    if n < 2 or queries < 1:
        raise ValueError(f"held-out recall needs at least 2 vectors and 1 query, got {n} and {queries}")
    held = np.random.default_rng(seed).choice(n, min(queries, n - 1), replace=False)
    if isinstance(spec_or_index, IndexSpec):
        if exact is not None:
            raise ValueError("held_out_recall takes `exact` only with a built index, not with a spec")
        rest = np.ones(n, bool)
        rest[held] = False
        index = build_index(vectors[rest], spec_or_index, seed=seed, threads=threads)
        return recall_at_k(index, vectors[rest], vectors[held], k, threads=threads)

    if spec_or_index.ntotal != n:
        raise ValueError(f"the index holds {spec_or_index.ntotal} vectors, not the {n} given")
    k = min(k, n - 1)
    exact = exact if exact is not None else build_index(vectors, threads=threads)
    _, truth = search(exact, vectors[held], k + 1)
    _, found = search(spec_or_index, vectors[held], k + 1)
    drop_self = [(r[r != q], t[t != q]) for r, t, q in zip(found, truth, held, strict=True)]
    return _overlap([r for r, _ in drop_self], [t for _, t in drop_self], k)


def save_index(index: faiss.Index, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))


def load_index(path: str | Path) -> faiss.Index:
    """FAISS's binary format, search parameters (nprobe, efSearch) included; nothing is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    return faiss.read_index(str(path))


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index: what it costs on disk, and about what it holds in memory."""
    return int(faiss.serialize_index(index).size)


# --------------------------------------------------------------- generated vectors for tests and benchmarks


def clustered_vectors(n: int, d: int, *, clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """(n, d) L2-normalised float32 vectors that cluster like embeddings of a video collection, seeded.

    Independent Gaussian vectors are a poor stand-in: in high dimension all their distances are alike and no
    index beats a scan. Real embeddings have topics and a low intrinsic dimension, so each vector here is a
    topic centre (centres span a d/32-dimensional subspace, so some topics are close) plus variation in a
    shared d/8-dimensional subspace plus a little isotropic noise. At d=512 a vector's nearest neighbour has
    cosine ~0.59, its 10th ~0.51, and unrelated vectors ~0. Generated in chunks: 1M x 512 needs ~2 GB.
    """
    rng = np.random.default_rng(seed)
    clusters = clusters or max(16, int(2 * math.sqrt(n)))
    topic_dim, spread_dim = max(4, d // 32), max(8, d // 8)
    centres = rng.standard_normal((clusters, topic_dim), dtype=np.float32) @ _orthonormal(rng, topic_dim, d)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = _orthonormal(rng, spread_dim, d)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 65_536):
        m = min(65_536, n - start)
        x = centres[rng.integers(clusters, size=m)]
        x += (1.2 / math.sqrt(spread_dim)) * rng.standard_normal((m, spread_dim), dtype=np.float32) @ spread
        x += (0.3 / math.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _orthonormal(rng: np.random.Generator, rows: int, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, rows)))
    return q.T.astype(np.float32)
