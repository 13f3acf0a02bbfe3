"""Index build time, memory and query latency on synthetic passages (a benchmark script, not a test).

    python experiments/retrieval/bench_scale.py --ckpt CKPT [--sizes 100000 1000000] [--factories Flat HNSW32]

1. Generates max(sizes) synthetic passages (words of the checkpoint's vocabulary, Zipf-distributed,
   30-90 words) and 1,000 queries (3-8 words), and encodes the passages with the checkpoint exactly as
   index.py does (tokenize + encode in 100k chunks). Vectors and texts are cached in --work.
2. For every size and factory, in a fresh process: build the FAISS index on the first N vectors and
   write the index folder (index.py's own functions); peak RSS of that process.
3. In another fresh process: load the folder (RSS added by faiss.index alone = index memory), then
   time single queries (tokenize + encode + search + passage lookup, k=10) and batches of 256, and the
   recall@10 of the index against exact search.
Prints a Markdown table and writes all figures to --work/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_texts(words: list[str], n: int, low: int, high: int, seed: int) -> list[str]:
    """n texts of low..high words drawn from ``words`` with Zipf(1.1) ranks (the vocabulary is frequency-ordered)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, size=n)
    ranks = (rng.zipf(1.1, size=int(lengths.sum())) - 1) % len(words)
    vocab = np.array(words, dtype=object)
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(vocab[ranks[at : at + length]]))
        at += length
    return out


# ----------------------------------------------------------------------------------------- stage 1: encode


def prepare(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.indexer import encode_passages

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n = max(args.sizes)
    meta_path = work / f"encoded-{n}.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    torch.set_num_threads(args.threads)
    module = load_checkpoint(args.ckpt)
    words = [w for w in module.tokenizer.words[2:] if w.isalpha()]
    start = time.perf_counter()
    texts = synthetic_texts(words, n, 30, 90, seed=0)
    queries = synthetic_texts(words[:20000], args.queries, 3, 8, seed=1)
    generated = time.perf_counter()
    timings = {}
    vectors = np.empty((n, module.towers.passage_encoder.output_dim), dtype=np.float32)
    for size in sorted(args.sizes):  # encode in order; the time to reach each size is what index.py would take
        done = len(timings) and max(s for s in timings)
        t0 = time.perf_counter()
        vectors[done:size] = encode_passages(module, texts[done:size])
        timings[size] = time.perf_counter() - t0 + (timings[done] if done else 0.0)
    np.save(work / "vectors.npy", vectors)
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "text": texts}), work / "passages.parquet")
    (work / "queries.json").write_text(json.dumps(queries))
    meta = {"generate_s": generated - start, "encode_s": {str(k): v for k, v in timings.items()}, "torch_threads": args.threads}
    meta_path.write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------------------- stage 2: build


def build(args) -> dict:
    import pyarrow.parquet as pq

    from two_tower.retrieval.checkpoint import load_checkpoint, model_identity
    from two_tower.retrieval.index import build_faiss, write_index_folder
    from two_tower.retrieval.query_encoder import QueryEncoder

    work, n, factory = Path(args.work), args.size, args.factory
    module = load_checkpoint(args.ckpt)
    encoder = QueryEncoder.from_module(module)
    passages = pq.read_table(work / "passages.parquet").slice(0, n)
    ids, texts = passages.column("id").to_pylist(), passages.column("text").to_pylist()
    vectors = np.load(work / "vectors.npy", mmap_mode="r")[:n]
    before = rss_mb()
    t0 = time.perf_counter()
    index = build_faiss(np.array(vectors), factory, search_params=args.search_params)
    t1 = time.perf_counter()
    out = work / f"index-{n}-{factory.replace(',', '_')}"
    write_index_folder(out, index, ids, texts, encoder, {"model": model_identity(module, args.ckpt), "config": vars(args)}, overwrite=True)
    t2 = time.perf_counter()
    return {"faiss_build_s": t1 - t0, "write_s": t2 - t1, "rss_before_build_mb": before, "peak_rss_mb": peak_rss_mb(), "folder": str(out)}


# ----------------------------------------------------------------------------------------- stage 3: search


def search(args) -> dict:
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from two_tower.retrieval.index import FAISS_FILE
    from two_tower.retrieval.search import Searcher

    work, n, factory = Path(args.work), args.size, args.factory
    folder = work / f"index-{n}-{factory.replace(',', '_')}"
    before = rss_mb()
    alone = faiss.read_index(str(folder / FAISS_FILE))
    index_mb = rss_mb() - before
    del alone
    t0 = time.perf_counter()
    searcher = Searcher.load(folder)
    load_s = time.perf_counter() - t0
    queries = json.loads((work / "queries.json").read_text())

    for q in queries[:20]:  # warm-up
        searcher.search([q], 10)
    single = []
    for q in queries:
        t = time.perf_counter()
        searcher.search([q], 10)
        single.append(time.perf_counter() - t)
    batches = [queries[i : i + 256] for i in range(0, len(queries) - 255, 256)] * 5
    batched = []
    for batch in batches:
        t = time.perf_counter()
        searcher.search(batch, 10)
        batched.append(time.perf_counter() - t)

    # recall@10 against exact inner product over the same vectors
    vectors = np.load(work / "vectors.npy", mmap_mode="r")[:n]
    qv = searcher.encoder.encode(queries)
    found = searcher.index.search(qv, 10).rows
    exact = np.concatenate([np.argpartition(-(qv[i : i + 100] @ np.asarray(vectors).T), 10, axis=1)[:, :10] for i in range(0, len(qv), 100)])
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())]))
    ms = lambda xs, p: float(np.percentile(xs, p) * 1000)
    return {
        "index_rss_mb": index_mb,
        "raw_vectors_mb": n * searcher.encoder.dim * 4 / 2**20,
        "file_mb": os.path.getsize(folder / FAISS_FILE) / 2**20,
        "load_s": load_s,
        "single_p50_ms": ms(single, 50),
        "single_p99_ms": ms(single, 99),
        "batch256_p50_ms": ms(batched, 50),
        "batch256_p99_ms": ms(batched, 99),
        "recall@10_vs_exact": recall,
        "threads": args.threads,
    }


# ----------------------------------------------------------------------------------------- driver


def child(stage: str, args, size: int, factory: str) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--ckpt", args.ckpt, "--work", args.work, "--size", str(size), "--factory", factory, "--threads", str(args.threads)]
    if factory.startswith("HNSW") and args.hnsw_params:
        cmd += ["--search-params", args.hnsw_params]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{stage} {size} {factory} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--work", default="/tmp/retrieval_bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32"])
    parser.add_argument("--hnsw-params", default="efSearch=64", help="search-time parameters saved with HNSW indexes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--stage", choices=["build", "search"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--factory", help=argparse.SUPPRESS)
    parser.add_argument("--search-params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps((build if args.stage == "build" else search)(args)))
        return

    meta = prepare(args)
    print(f"generated {max(args.sizes)} passages in {meta['generate_s']:.0f}s; encode seconds by size: {meta['encode_s']}", flush=True)
    rows = []
    for size in args.sizes:
        for factory in args.factories:
            row = {"passages": size, "factory": factory, "encode_s": meta["encode_s"][str(size)]}
            row.update(child("build", args, size, factory))
            row.update(child("search", args, size, factory))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (Path(args.work) / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = (
        "| passages | index | encode s | FAISS build s | write s | build peak RSS MB | index RAM MB (x raw) | "
        "single p50 / p99 ms | batch-256 p50 / p99 ms | recall@10 vs exact |"
    )
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['passages']:,} | {r['factory']} | {r['encode_s']:.0f} | {r['faiss_build_s']:.1f} | {r['write_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['index_rss_mb']:.0f} ({r['index_rss_mb'] / r['raw_vectors_mb']:.2f}x) | {r['single_p50_ms']:.2f} / {r['single_p99_ms']:.2f} | "
            f"{r['batch256_p50_ms']:.0f} / {r['batch256_p99_ms']:.0f} | {r['recall@10_vs_exact']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
