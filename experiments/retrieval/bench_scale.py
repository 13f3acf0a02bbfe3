"""Index build time, memory and query latency on synthetic passages (a benchmark script, not a test).

    python experiments/retrieval/bench_scale.py --ckpt CKPT [--sizes 100000 1000000] [--factories Flat HNSW32]

1. Generates max(sizes) synthetic passages (words of the checkpoint's vocabulary, Zipf-distributed,
   30-90 words) and 1,000 queries (3-8 words), and encodes the passages with the checkpoint exactly as
   index.py does (tokenize + encode in 100k chunks). Texts, vectors and each chunk's encoding time are
   kept in --work, so an interrupted run resumes at the next chunk.
2. For every size and factory, in a fresh process: build the FAISS index on the first N vectors and
   write the index folder (index.py's own functions). (Its peak RSS, in results.json, includes the
   whole 1M-text table; for the memory of a build, run index.py under /usr/bin/time -v as the
   README shows.)
3. In another fresh process: load the folder (RSS added by faiss.index alone = index memory), then
   time single queries (tokenize + encode + search + passage lookup, k=10) and batches of 256, and the
   recall@10 of the index against exact search.
Prints a Markdown table and writes all figures to --work/results.json.
4. By hand, after a run: ``--stage ef-sweep --size 1000000 --factory HNSW32 --ckpt CKPT --threads 1``
   prints single-query latency and recall@10 for efSearch 16 to 256.
"""

from __future__ import annotations

import argparse
import json
import math
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


CHUNK = 100_000  # index.py's encoding chunk; also the unit of resumption here (smaller if the sizes need it)


def prepare(args) -> dict:
    """Texts, queries and passage vectors in --work; resumable chunk by chunk (each chunk's time is kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.indexer import encode_passages

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n = max(args.sizes)
    torch.set_num_threads(args.threads)
    module = load_checkpoint(args.ckpt)
    if not (work / "passages.parquet").exists():
        words = [w for w in module.tokenizer.words[2:] if w.isalpha()]
        texts = synthetic_texts(words, n, 30, 90, seed=0)
        (work / "queries.json").write_text(json.dumps(synthetic_texts(words[:20000], args.queries, 3, 8, seed=1)))
        pq.write_table(pa.table({"id": [str(i) for i in range(n)], "text": texts}), work / "passages.parquet")
    texts = pq.read_table(work / "passages.parquet").column("text").to_pylist()
    chunk = math.gcd(CHUNK, *args.sizes)
    progress_path = work / "encoded.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"chunk_seconds": [], "threads": args.threads}
    dim = module.towers.passage_encoder.output_dim
    mode = "r+" if (work / "vectors.npy").exists() else "w+"
    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode=mode, dtype=np.float32, shape=(n, dim))
    for i in range(len(progress["chunk_seconds"]), n // chunk):
        t0 = time.perf_counter()
        vectors[i * chunk : (i + 1) * chunk] = encode_passages(module, texts[i * chunk : (i + 1) * chunk])
        vectors.flush()
        progress["chunk_seconds"].append(time.perf_counter() - t0)
        progress_path.write_text(json.dumps(progress))
    seconds = progress["chunk_seconds"]
    return {"encode_s": {str(s): sum(seconds[: s // chunk]) for s in args.sizes}, "encode_threads": progress["threads"]}


# ----------------------------------------------------------------------------------------- stage 2: build


def build(args) -> dict:
    import pyarrow.parquet as pq

    from two_tower.retrieval.checkpoint import load_checkpoint, model_identity
    from two_tower.retrieval.index import build_faiss, write_index_folder
    from two_tower.retrieval.indexer import corpus_statistics, static_model_of
    from two_tower.retrieval.query_encoder import QueryEncoder

    work, n, factory = Path(args.work), args.size, args.factory
    module = load_checkpoint(args.ckpt)
    encoder = QueryEncoder.from_module(module)
    passages = pq.read_table(work / "passages.parquet").slice(0, n)
    ids, texts = passages.column("id").to_pylist(), passages.column("text").to_pylist()
    vectors = np.load(work / "vectors.npy", mmap_mode="r")[:n]
    # a bag-of-words checkpoint's folder holds the corpus's term statistics (its query tower weighs by them) and the
    # static model its vocabulary extension comes from, as index.py writes them; None and no cost without a bag
    statistics = corpus_statistics(module, texts)
    before = rss_mb()
    t0 = time.perf_counter()
    index = build_faiss(np.array(vectors), factory, search_params=args.search_params)
    t1 = time.perf_counter()
    out = work / f"index-{n}-{factory.replace(',', '_')}"
    write_index_folder(out, index, ids, texts, encoder, {"model": model_identity(module, args.ckpt), "config": vars(args)}, overwrite=True,
                       statistics=statistics, static_model=static_model_of(encoder))
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
    size = min(256, len(queries))  # batches of 256 (all the queries, when there are fewer)
    batches = [queries[i : i + size] for i in range(0, len(queries) - size + 1, size)] * 5
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


def ef_sweep(args) -> dict:
    """HNSW only: single-query p50/p99 and recall@10 for several efSearch values (run by hand after the main run)."""
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from two_tower.retrieval.search import Searcher

    work, n = Path(args.work), args.size
    searcher = Searcher.load(work / f"index-{n}-{args.factory}")
    queries = json.loads((work / "queries.json").read_text())
    vectors = np.asarray(np.load(work / "vectors.npy", mmap_mode="r")[:n])
    qv = searcher.encoder.encode(queries)
    exact = np.concatenate([np.argpartition(-(qv[i : i + 100] @ vectors.T), 10, axis=1)[:, :10] for i in range(0, len(qv), 100)])
    out = {}
    for ef in (16, 32, 64, 128, 256):
        searcher.index.set_search_params(f"efSearch={ef}")
        for q in queries[:20]:
            searcher.search([q], 10)
        times = []
        for q in queries:
            t = time.perf_counter()
            searcher.search([q], 10)
            times.append(time.perf_counter() - t)
        found = searcher.index.search(qv, 10).rows
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())]))
        out[ef] = {"single_p50_ms": float(np.percentile(times, 50) * 1000), "single_p99_ms": float(np.percentile(times, 99) * 1000), "recall@10_vs_exact": recall}
    return out


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
    parser.add_argument("--reuse-indexes", action="store_true", help="keep the index folders and build figures of the last run; re-measure search only")
    parser.add_argument("--stage", choices=["build", "search", "ef-sweep"], help="run one stage in this process (ef-sweep: by hand, after a run)")
    parser.add_argument("--size", type=int, help="with --stage: the index size")
    parser.add_argument("--factory", help="with --stage: the index factory")
    parser.add_argument("--search-params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.ckpt = str(Path(args.ckpt).expanduser().resolve())  # the stages run in child processes started in the checkout
    if args.stage:
        print(json.dumps({"build": build, "search": search, "ef-sweep": ef_sweep}[args.stage](args)))
        return

    meta = prepare(args)
    print(f"encode seconds by size (tokenize + encode): {meta['encode_s']}", flush=True)
    results = Path(args.work) / "results.json"
    built = {}
    if args.reuse_indexes and results.exists():
        built = {(r["passages"], r["factory"]): r for r in json.loads(results.read_text())["rows"]}
    rows = []
    for size in args.sizes:
        for factory in args.factories:
            row = {"passages": size, "factory": factory, "encode_s": meta["encode_s"][str(size)]}
            if (size, factory) in built:  # the index folder and its build figures from the last run
                row.update({k: built[size, factory][k] for k in ("faiss_build_s", "write_s", "rss_before_build_mb", "peak_rss_mb", "folder")})
            else:
                row.update(child("build", args, size, factory))
            row.update(child("search", args, size, factory))
            rows.append(row)
            print(json.dumps(row), flush=True)
    results.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = (
        "| passages | index | encode s | FAISS build s | write s | index RAM MB (x raw) | "
        "single p50 / p99 ms | batch-256 p50 / p99 ms | recall@10 vs exact |"
    )
    lines = [head, "|---" * 9 + "|"]
    for r in rows:
        lines.append(
            f"| {r['passages']:,} | {r['factory']} | {r['encode_s']:.0f} | {r['faiss_build_s']:.1f} | {r['write_s']:.1f} | "
            f"{r['index_rss_mb']:.0f} ({r['index_rss_mb'] / r['raw_vectors_mb']:.2f}x) | {r['single_p50_ms']:.2f} / {r['single_p99_ms']:.2f} | "
            f"{r['batch256_p50_ms']:.0f} / {r['batch256_p99_ms']:.0f} | {r['recall@10_vs_exact']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
