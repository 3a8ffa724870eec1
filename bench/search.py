"""Search cost of a video library: exact and approximate FAISS search, and the per-query cost of X-Pool style
text-conditioned pooling against the one similarity per video that Prompt Switch needs.

    .venv/bin/python bench/search.py [--sizes 10000,100000,1000000] [--dim 512] [--threads N] [--seed 0]
        [--xpool-sizes 1000,100000] [--xpool-dim D] [--budget 10] [--quick] [--json PATH]

For each library size n, on generated clustered L2-normalised float32 vectors (seeded
library.index.clustered_vectors; the queries are further vectors of the same generator, not in the library):

  - exact (IndexFlatIP) against approximate search (library.index's default approximate spec for n:
    HNSW32,Flat below 200k vectors, IVF{~4 sqrt n},SQ8 above): latency p50/p99 of one query and of batches
    of 64, and queries/s at the median latency, the two interleaved call by call so that outside load hits
    both alike (the approximate / exact ratios are therefore ratios of medians);
  - recall@10 of approximate against exact search, checked against library.index.DEFAULT_RECALL_TARGET;
  - the memory-bandwidth floor of exact search, measured in the same run: the fastest of several reads of the
    (n, D) matrix, the same n*D*4 bytes a query reads (a column sum or a mat-vec, on the run's threads). Exact
    single-query latency / floor is expected within 2x. Also printed: the floor of one core (a numpy column
    sum), since FAISS scans for a single query on one thread;
  - bytes per video: float32 and float16 vectors, and the approximate index (library.index.index_bytes / n).

Expected at 1M vectors: approximate queries/s >= 20x exact at recall@10 >= 0.95.

Then, the paper's efficiency claim: the per-query cost of scoring every video against one text embedding t
(D) at 1k and 100k videos, in torch on the CPU with the same threads, both followed by top-10:

  - Prompt Switch: one similarity per video, (n, D) @ t: O(n D);
  - X-Pool style: per text-video pair, attention weights softmax(t . f_i / sqrt(D)) over the video's F=12
    frame features, the frames pooled with them, one D x D linear layer on the pooled vector, cosine with t:
    O(n F D + n D^2). Also timed without the projection (O(n F D)).

Frame features are random normalised float32 of --xpool-dim (default --dim), processed in chunks of 8192
videos: at 100k x 12 x 512 they take 2.5 GB, the run stays under ~6 GB at 1M library vectors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402  (only for its version; every FAISS call goes through library.index)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from library.index import (  # noqa: E402
    DEFAULT_RECALL_TARGET,
    IndexSpec,
    build_index,
    clustered_vectors,
    default_factory,
    index_bytes,
    recall_at_k,
    search,
    set_threads,
)

K = 10
BATCH = 64
FRAMES = 12
FLOOR_LIMIT = 2.0  # exact single-query latency within 2x of reading its bytes
SPEEDUP_AT_1M = 20.0  # approximate / exact queries/s at 1M vectors


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    fns: dict, budget_s: float, min_reps: int = 5, max_reps: int = 1000
) -> dict[str, list[float]]:
    """Seconds per call of each fn(i), called A B A B ... until `budget_s` is spent (at least min_reps)."""
    for fn in fns.values():  # warm-up: first-touch pages, thread pools, caches
        fn(0)
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for i in range(max_reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)
        if i + 1 >= min_reps and time.perf_counter() - start > budget_s:
            break
    return times


def latency(times: list[float], per_call: int) -> dict:
    """p50/p99 and queries/s at the median: on a shared machine the mean follows other processes' bursts."""
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "qps": per_call / p50, "calls": len(times)}


def bandwidth_floors(vectors: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Best-of seconds to read the matrix once: on one core, and on the run's threads.

    one core: a numpy column sum (one add per element). threads: the faster of a torch column sum and a torch
    mat-vec (which is what an exact scan computes), on torch's threads (--threads).
    """
    out = np.empty(vectors.shape[1], np.float32)
    tensor, vec = torch.from_numpy(vectors), torch.ones(vectors.shape[1])
    one_core = min(timed(lambda: np.add.reduce(vectors, axis=0, out=out)) for _ in range(repeats))
    threaded = min(timed(fn) for fn in (lambda: tensor.sum(0), lambda: tensor @ vec) for _ in range(repeats))
    return {"one_core": one_core, "threads": min(one_core, threaded)}


def measure_size(n: int, args: argparse.Namespace) -> dict:
    d = args.dim
    t0 = time.perf_counter()
    data = clustered_vectors(n + args.queries, d, seed=args.seed)
    vectors, queries = data[:n], data[n:]
    print(f"\n== n={n:,} D={d}: vectors generated in {time.perf_counter() - t0:.1f} s")

    start = time.perf_counter()
    exact = build_index(vectors)
    t_exact = time.perf_counter() - start
    factory = default_factory(n, d)
    approx = build_index(vectors, IndexSpec("approximate"), seed=args.seed)
    t_approx = time.perf_counter() - start - t_exact
    print(f"built: exact {t_exact:.1f} s, approximate {factory} {t_approx:.1f} s")

    floors = bandwidth_floors(vectors)
    recall = recall_at_k(approx, vectors, queries, K, exact=exact)
    nq = len(queries)
    single = interleaved(
        {
            "exact": lambda i: search(exact, queries[i % nq], K),
            "approx": lambda i: search(approx, queries[i % nq], K),
        },
        args.budget,
    )
    batch = interleaved(
        {
            "exact": lambda i: search(exact, queries[(i * BATCH) % (nq - BATCH + 1) :][:BATCH], K),
            "approx": lambda i: search(approx, queries[(i * BATCH) % (nq - BATCH + 1) :][:BATCH], K),
        },
        args.budget,
    )
    row = {
        "n": n,
        "dim": d,
        "factory": factory,
        "build_s": {"exact": t_exact, "approx": t_approx},
        "recall_at_10": recall,
        "single": {name: latency(t, 1) for name, t in single.items()},
        "batch64": {name: latency(t, BATCH) for name, t in batch.items()},
        "floor_ms": floors["threads"] * 1e3,
        "floor_gb_s": n * d * 4 / floors["threads"] / 1e9,
        "floor_one_core_ms": floors["one_core"] * 1e3,
        "bytes_per_video": {"float32": d * 4, "float16": d * 2, "approx_index": index_bytes(approx) / n},
    }
    row["exact_over_floor"] = row["single"]["exact"]["p50_ms"] / row["floor_ms"]
    row["exact_over_one_core_floor"] = row["single"]["exact"]["p50_ms"] / row["floor_one_core_ms"]
    row["speedup"] = {
        kind: row[kind]["approx"]["qps"] / row[kind]["exact"]["qps"] for kind in ("single", "batch64")
    }
    s, b = row["single"], row["batch64"]
    print(f"recall@10 approximate vs exact: {recall:.4f} (target {DEFAULT_RECALL_TARGET})")
    for name in ("exact", "approx"):
        print(
            f"{name:7} one query p50 {s[name]['p50_ms']:8.3f} ms p99 {s[name]['p99_ms']:8.3f} ms "
            f"{s[name]['qps']:9.0f} q/s | batch 64 p50 {b[name]['p50_ms']:8.2f} ms "
            f"p99 {b[name]['p99_ms']:8.2f} ms {b[name]['qps']:9.0f} q/s"
        )
    print(
        f"bandwidth floor {row['floor_ms']:.3f} ms ({row['floor_gb_s']:.1f} GB/s), one core "
        f"{row['floor_one_core_ms']:.3f} ms; exact one query / floor {row['exact_over_floor']:.2f}x "
        f"(expected <= {FLOOR_LIMIT}x), / one-core floor {row['exact_over_one_core_floor']:.2f}x"
    )
    print(
        f"approximate / exact q/s: one query {row['speedup']['single']:.1f}x, batch 64 "
        f"{row['speedup']['batch64']:.1f}x; bytes per video: float32 {d * 4}, float16 {d * 2}, "
        f"{factory} {row['bytes_per_video']['approx_index']:.0f}"
    )
    return row


# ------------------------------------------------------------------------------- X-Pool style pooling


def xpool_topk(t: torch.Tensor, frames: torch.Tensor, proj: torch.Tensor | None, chunk: int = 8192):
    """Top-K videos for one text under text-conditioned pooling: every text-video pair is computed anew."""
    n, _, d = frames.shape
    scores = torch.empty(n)
    for s in range(0, n, chunk):
        f = frames[s : s + chunk]  # (c, F, D)
        w = torch.softmax(f @ t / math.sqrt(d), dim=1)  # attention of the text over each video's frames
        pooled = torch.bmm(w.unsqueeze(1), f).squeeze(1)  # (c, D), no (c, F, D) temporary
        if proj is not None:
            pooled = pooled @ proj
        scores[s : s + chunk] = torch.nn.functional.normalize(pooled, dim=1) @ t
    return torch.topk(scores, min(K, n))


def measure_xpool(n: int, args: argparse.Namespace) -> dict:
    d = args.xpool_dim or args.dim
    g = torch.Generator().manual_seed(args.seed)
    frames = torch.empty(n, FRAMES, d)
    for s in range(0, n, 8192):  # generated in chunks: no float64 or second full-size copy
        f = torch.randn(min(8192, n - s), FRAMES, d, generator=g)
        frames[s : s + len(f)] = torch.nn.functional.normalize(f, dim=2)
    videos = torch.nn.functional.normalize(frames.mean(1), dim=1)  # Prompt Switch: one embedding per video
    proj = torch.randn(d, d, generator=g) / math.sqrt(d)
    texts = torch.nn.functional.normalize(torch.randn(64, d, generator=g), dim=1)

    with torch.inference_mode():
        times = interleaved(
            {
                "similarity": lambda i: torch.topk(videos @ texts[i % 64], min(K, n)),
                "xpool": lambda i: xpool_topk(texts[i % 64], frames, proj),
                "xpool_no_proj": lambda i: xpool_topk(texts[i % 64], frames, None),
            },
            args.budget,
            min_reps=3,
        )
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    flops = {
        "similarity": 2 * n * d,
        "xpool": n * (4 * FRAMES * d + 2 * d * d),
        "xpool_no_proj": 4 * n * FRAMES * d,
    }
    row = {
        "n": n,
        "dim": d,
        "frames": FRAMES,
        "frame_bytes": frames.numel() * 4,
        "median_ms": med,
        "ratio": {name: med[name] / med["similarity"] for name in ("xpool", "xpool_no_proj")},
        "flop_ratio": {name: flops[name] / flops["similarity"] for name in ("xpool", "xpool_no_proj")},
        "calls": len(times["similarity"]),
    }
    print(
        f"\n== X-Pool style at {n:,} videos x {FRAMES} frames x D={d} ({row['frame_bytes'] / 1e9:.2f} GB): "
        f"median per query: similarity {med['similarity']:.3f} ms, X-Pool {med['xpool']:.2f} ms "
        f"({row['ratio']['xpool']:.0f}x; FLOPs {row['flop_ratio']['xpool']:.0f}x), without projection "
        f"{med['xpool_no_proj']:.2f} ms ({row['ratio']['xpool_no_proj']:.0f}x; FLOPs "
        f"{row['flop_ratio']['xpool_no_proj']:.0f}x), {row['calls']} calls each"
    )
    return row


# ------------------------------------------------------------------------------------------ summary


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        ok = r["exact_over_floor"] <= FLOOR_LIMIT
        out.append(
            f"{'PASS' if ok else 'FAIL'}: n={r['n']:,} exact one-query latency / bandwidth floor "
            f"{r['exact_over_floor']:.2f}x (expected <= {FLOOR_LIMIT}x; against one core's floor "
            f"{r['exact_over_one_core_floor']:.2f}x)"
        )
        ok = r["recall_at_10"] >= DEFAULT_RECALL_TARGET
        out.append(
            f"{'PASS' if ok else 'FAIL'}: n={r['n']:,} {r['factory']} recall@10 {r['recall_at_10']:.4f} "
            f"(target >= {DEFAULT_RECALL_TARGET})"
        )
    big = [r for r in rows if r["n"] >= 1_000_000]
    for r in big:
        ok = r["speedup"]["single"] >= SPEEDUP_AT_1M and r["recall_at_10"] >= 0.95
        out.append(
            f"{'PASS' if ok else 'FAIL'}: n={r['n']:,} approximate / exact q/s {r['speedup']['single']:.1f}x "
            f"at recall@10 {r['recall_at_10']:.3f} (expected >= {SPEEDUP_AT_1M:.0f}x at >= 0.95)"
        )
    if not big:
        out.append("not measured: approximate / exact q/s at 1M vectors (add 1000000 to --sizes)")
    return out


def summary(rows: list[dict], xrows: list[dict]) -> None:
    print("\n## Summary (ratios are what to read; times move with the machine's load)\n")
    print(
        "| n | index | recall@10 | exact 1q p50/p99 ms | approx 1q p50/p99 ms | 1q speedup | exact b64 q/s "
        "| approx b64 q/s | b64 speedup | floor ms (1 core) | exact / floor (1 core) "
        "| B/video f32 / f16 / index |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s, b = r["single"], r["batch64"]
        print(
            f"| {r['n']:,} | {r['factory']} | {r['recall_at_10']:.4f} "
            f"| {s['exact']['p50_ms']:.3f} / {s['exact']['p99_ms']:.3f} "
            f"| {s['approx']['p50_ms']:.3f} / {s['approx']['p99_ms']:.3f} | {r['speedup']['single']:.1f}x "
            f"| {b['exact']['qps']:,.0f} | {b['approx']['qps']:,.0f} | {r['speedup']['batch64']:.1f}x "
            f"| {r['floor_ms']:.3f} ({r['floor_one_core_ms']:.3f}) "
            f"| {r['exact_over_floor']:.2f}x ({r['exact_over_one_core_floor']:.2f}x) "
            f"| {r['bytes_per_video']['float32']} / {r['bytes_per_video']['float16']} "
            f"/ {r['bytes_per_video']['approx_index']:.0f} |"
        )
    if xrows:
        print(
            "\n| videos | D | similarity ms/query | X-Pool ms/query | ratio (FLOPs) "
            "| no projection ms | ratio (FLOPs) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for x in xrows:
            m, r, f = x["median_ms"], x["ratio"], x["flop_ratio"]
            print(
                f"| {x['n']:,} | {x['dim']} | {m['similarity']:.3f} | {m['xpool']:.2f} "
                f"| {r['xpool']:.0f}x ({f['xpool']:.0f}x) | {m['xpool_no_proj']:.2f} "
                f"| {r['xpool_no_proj']:.0f}x ({f['xpool_no_proj']:.0f}x) |"
            )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="library sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="query vectors; recall is over all of them")
    parser.add_argument("--xpool-sizes", default="1000,100000", help="videos for the X-Pool comparison")
    parser.add_argument("--xpool-dim", type=int, default=None, help="frame feature dimension (default --dim)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per latency measurement")
    parser.add_argument("--threads", type=int, default=None, help="FAISS and torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10k vectors and 1k videos only, a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.xpool_sizes, args.budget = "10000", "1000", min(args.budget, 2.0)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    xsizes = [int(s) for s in args.xpool_sizes.split(",") if s]
    if args.queries < BATCH:
        parser.error(f"--queries must be at least {BATCH} (one batch)")

    if args.threads is not None:
        set_threads(args.threads)
        torch.set_num_threads(args.threads)
    command = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]])
    meta = {
        "command": command,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "load_before": os.getloadavg(),
    }
    print(f"command: {command}")
    print(
        f"faiss {faiss.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, faiss threads "
        f"{meta['faiss_threads']}, torch threads {meta['torch_threads']}, load {meta['load_before'][0]:.2f}"
    )

    rows = [measure_size(n, args) for n in sizes]
    xrows = [measure_xpool(n, args) for n in xsizes]
    meta["load_after"] = os.getloadavg()
    meta["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    summary(rows, xrows)
    checks = verdicts(rows)
    print("\n".join(checks))
    busy = max(meta["load_before"][0], meta["load_after"][0]) > os.cpu_count()
    print(
        f"load average before {meta['load_before'][0]:.2f}, after {meta['load_after'][0]:.2f}"
        + (" (busy: other processes shared the CPUs; rerun when idle)" if busy else "")
        + f"; peak RSS {meta['peak_rss_gb']:.2f} GB"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"meta": meta, "sizes": rows, "xpool": xrows, "checks": checks}, indent=2)
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
