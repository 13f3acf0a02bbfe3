"""An index for 8.8M passages, measured at 1M on this machine (issue #14 item 5; a benchmark, not a test).

    python experiments/scale/index_bench.py encode --ckpt CKPT --work DIR [--n 1000000]
    python experiments/scale/index_bench.py exact  --work DIR
    python experiments/scale/index_bench.py build  --work DIR --factory 'IVF1024,PQ272x8' [--train-size 100000]
    python experiments/scale/index_bench.py search --work DIR --factory 'IVF1024,PQ272x8' --params 'nprobe=16' ...

encode: the corpus is marco7k's unique passages (train + validation) followed by synthetic passages of
    40-72 words (mean 56, v1.1's average) drawn Zipf-style from the checkpoint's vocabulary, up to --n;
    term statistics over the whole corpus, then the passages are encoded in 50k chunks exactly as index.py
    does (``indexer.encoded_chunks``) into DIR/vectors.npy (resumable by chunk); the 1,000 first
    marco7k validation queries are encoded by the index's query encoder into DIR/queries.npy.
exact: the exact top 100 of every query by brute force over vectors.npy (in chunks): the ground truth.
build: in this process, ``index.build_faiss_streamed`` with chunks read from vectors.npy (never the whole
    array in memory): trains on a sample, adds in 50k chunks, writes DIR/<factory>.faiss; peak RSS and times.
search: in a fresh process: RSS added by reading the index, single-query FAISS latency (p50/p99) and
    recall@10 against the exact top 10 for each --params setting (one FAISS thread).
Figures go to DIR/results.jsonl (one JSON object a line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# The retrieval study's synthetic passages and memory readings, shared (experiments/retrieval/bench_scale.py).
from experiments.retrieval.bench_scale import peak_rss_mb, rss_mb, synthetic_texts  # noqa: E402
CHUNK = 50_000


def record(work: Path, entry: dict) -> None:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_avg_1m": os.getloadavg()[0], **entry}
    print(json.dumps(entry), flush=True)
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def corpus(module, data: str, n: int) -> tuple[list[str], list[str]]:
    from two_tower.retrieval.corpus import split_passages

    real = list(dict.fromkeys(t for split in ("train", "validation") for t in split_passages(split, data, "", "").texts))
    words = [w for w in module.tokenizer.words[2:] if w.isalpha()]
    texts = real + synthetic_texts(words, max(0, n - len(real)), 40, 72, seed=0)
    from two_tower.data import msmarco

    rows, _ = msmarco.validate_rows(msmarco.load_split("validation", data), "validation", for_training=False)
    queries = [row.query for row in rows][:1000]
    return texts[:n], queries


def encode(args) -> None:
    import torch

    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.indexer import corpus_statistics, encoded_chunks
    from two_tower.retrieval.query_encoder import QueryEncoder

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    module = load_checkpoint(args.ckpt)
    t0 = time.perf_counter()
    texts, queries = corpus(module, args.data, args.n)
    t1 = time.perf_counter()
    statistics = corpus_statistics(module, texts)
    t2 = time.perf_counter()
    encoder = QueryEncoder.from_module(module)
    encoder.set_statistics(statistics)
    np.save(work / "queries.npy", encoder.encode(queries).astype(np.float32))
    dim = module.towers.passage_encoder.output_dim
    progress_path = work / "encoded.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"chunk_seconds": [], "n": args.n}
    mode = "r+" if (work / "vectors.npy").exists() else "w+"
    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode=mode, dtype=np.float32, shape=(args.n, dim))
    done = len(progress["chunk_seconds"])
    record(work, {"stage": "encode-start", "n": args.n, "dim": dim, "real_passages": "marco7k train+validation", "make_texts_s": t1 - t0, "statistics_s": t2 - t1, "resume_at_chunk": done})
    clock = time.perf_counter()
    for i, chunk in enumerate(encoded_chunks(module, texts[done * CHUNK :], args.batch_size, CHUNK, statistics)):
        start = (done + i) * CHUNK
        vectors[start : start + len(chunk)] = chunk
        vectors.flush()
        progress["chunk_seconds"].append(time.perf_counter() - clock)
        progress_path.write_text(json.dumps(progress))
        clock = time.perf_counter()
    seconds = progress["chunk_seconds"]
    record(work, {"stage": "encode", "n": args.n, "encode_s": sum(seconds), "passages_per_s": args.n / sum(seconds), "peak_rss_mb": peak_rss_mb()})


def npy_layout(path: Path) -> tuple[int, int, int]:
    """(rows, dim, offset of the data) of a float32 .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
        return shape[0], shape[1], f.tell()


def read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a float32 .npy file read with plain file reads: a memory map would count its
    pages (and the kernel's fault-around neighbours) in this process's RSS and spoil the peak."""
    _, dim, offset = npy_layout(path)
    with open(path, "rb") as f:
        f.seek(offset + start * dim * 4)
        return np.fromfile(f, dtype=np.float32, count=(stop - start) * dim).reshape(-1, dim)


def read_sample(path: Path, rows: np.ndarray) -> np.ndarray:
    _, dim, offset = npy_layout(path)
    out = np.empty((len(rows), dim), dtype=np.float32)
    with open(path, "rb") as f:
        for i, row in enumerate(rows.tolist()):
            f.seek(offset + row * dim * 4)
            out[i] = np.fromfile(f, dtype=np.float32, count=dim)
    return out


def exact(args) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    queries = np.load(work / "queries.npy")
    faiss.normalize_L2(queries)
    n = np.load(work / "vectors.npy", mmap_mode="r").shape[0]
    k = 100
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        chunk = read_rows(work / "vectors.npy", start, start + CHUNK)
        faiss.normalize_L2(chunk)
        scores = queries @ chunk.T
        s = np.concatenate([best_s, scores], 1)
        i = np.concatenate([best_i, np.arange(start, start + len(chunk))[None, :].repeat(len(queries), 0)], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    np.save(work / "exact_top100.npy", best_i)
    np.save(work / "exact_top100_scores.npy", best_s)
    record(work, {"stage": "exact", "n": n, "queries": len(queries), "seconds": time.perf_counter() - t0, "per_query_ms": 1000 * (time.perf_counter() - t0) / len(queries)})


def slug(factory: str) -> str:
    return factory.replace(",", "_").replace("(", "-").replace(")", "")


def build(args) -> None:
    import faiss

    from two_tower.retrieval.index import build_faiss_streamed

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    path = work / "vectors.npy"
    n, dim, _ = npy_layout(path)
    n = min(n, args.limit or n)
    before = rss_mb()
    seconds: dict = {}
    t0 = time.perf_counter()
    chunks = (read_rows(path, s, min(s + CHUNK, n)) for s in range(0, n, CHUNK))
    index = build_faiss_streamed(n, dim, lambda rows: read_sample(path, rows), chunks, args.factory, args.train_size, None, 0, seconds)
    total = time.perf_counter() - t0
    out = work / f"{slug(args.factory)}-{n}.faiss"
    faiss.write_index(index, str(out))
    record(
        work,
        {
            "stage": "build", "factory": args.factory, "n": n, "dim": dim, "train_size": args.train_size, "threads": args.threads,
            "build_s": total, "read_vectors_s": seconds["vectors"], "train_s": seconds["train"], "add_s": seconds["add"],
            "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "file_mb": out.stat().st_size / 2**20,
            "raw_float32_mb": n * dim * 4 / 2**20,
        },
    )


def search(args) -> None:
    import faiss

    from two_tower.retrieval.index import set_search_params

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    queries = np.load(work / "queries.npy")[: args.queries or None]
    faiss.normalize_L2(queries)
    exact10 = np.load(work / "exact_top100.npy")[: len(queries), :10]
    n = args.limit or np.load(work / "vectors.npy", mmap_mode="r").shape[0]
    path = work / f"{slug(args.factory)}-{n}.faiss"
    before = rss_mb()
    t0 = time.perf_counter()
    index = faiss.read_index(str(path))
    load_s = time.perf_counter() - t0
    index_rss = rss_mb() - before
    for params in args.params:
        if params:
            set_search_params(index, params, f"search_params={params!r}", args.factory)
        index.search(queries[:20], 10)  # warm up
        times, found = [], []
        for q in range(len(queries)):
            t = time.perf_counter()
            _, rows = index.search(queries[q : q + 1], 10)
            times.append(time.perf_counter() - t)
            found.append(len(set(rows[0].tolist()) & set(exact10[q].tolist())) / 10)
        record(
            work,
            {
                "stage": "search", "factory": args.factory, "n": n, "params": params, "queries": len(queries), "threads": args.threads, "index_rss_mb": index_rss, "load_s": load_s,
                "p50_ms": 1000 * float(np.percentile(times, 50)), "p99_ms": 1000 * float(np.percentile(times, 99)), "recall@10": float(np.mean(found)),
            },
        )


def parts(args) -> None:
    """How compressible each part of the vector is, on a sample: the RNN part (first --dense-dim floats)
    and the bag (the rest). PCA: share of the variance in the top 1/8 and 1/4 of the components.
    PQ with 8-float sub-vectors and 256 centroids each (1 byte per 8 floats, the PQ272x8 rate): the
    relative squared error of the reconstruction, and of the query-passage inner products, per part."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    path = work / "vectors.npy"
    n = np.load(path, mmap_mode="r").shape[0]
    rows = np.sort(np.random.default_rng(1).choice(n, args.train_size, replace=False))
    sample = read_sample(path, rows)
    faiss.normalize_L2(sample)
    queries = np.load(work / "queries.npy")
    faiss.normalize_L2(queries)
    train, test = sample[: len(sample) // 2], sample[len(sample) // 2 :]
    for name, cols in (("rnn", slice(0, args.dense_dim)), ("bag", slice(args.dense_dim, None)), ("whole", slice(None))):
        x_train, x_test, q = np.ascontiguousarray(train[:, cols]), np.ascontiguousarray(test[:, cols]), np.ascontiguousarray(queries[:, cols])
        d = x_train.shape[1]
        centred = x_train - x_train.mean(0)
        eig = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1]
        pq = faiss.ProductQuantizer(d, d // 8, 8)
        t = time.perf_counter()
        pq.train(x_train)
        train_s = time.perf_counter() - t
        rec = pq.decode(pq.compute_codes(x_test))
        ip, ip_hat = q @ x_test.T, q @ rec.T
        record(work, {
            "stage": "parts", "part": name, "dim": d, "sample": len(x_test), "share_of_score": float(np.mean(np.sum(x_test**2, 1))),
            "pca_variance_top_1/8": float(eig[: d // 8].sum() / eig.sum()), "pca_variance_top_1/4": float(eig[: d // 4].sum() / eig.sum()),
            "pq_relative_sq_error": float(np.sum((x_test - rec) ** 2) / np.sum(x_test**2)),
            "pq_inner_product_rel_error": float(np.sqrt(np.mean((ip - ip_hat) ** 2)) / np.std(ip)), "pq_train_s": train_s,
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["encode", "exact", "build", "search", "parts"])
    parser.add_argument("--dense-dim", type=int, default=128, help="parts: floats of the RNN part (the rest is the bag)")
    parser.add_argument("--ckpt")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "marco7k"))
    parser.add_argument("--work", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=0, help="build/search on the first LIMIT vectors only (0 = all)")
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--params", nargs="*", default=[""])
    parser.add_argument("--queries", type=int, default=0, help="search: the first N queries only (0 = all 1,000)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"encode": encode, "exact": exact, "build": build, "search": search, "parts": parts}[args.stage](args)


if __name__ == "__main__":
    main()
