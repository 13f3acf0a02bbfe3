"""A bounded load test of the search service on loopback (a benchmark script, not a test).

    python experiments/serve/load_test.py --index /tmp/serve_load/index --queries /tmp/serve_load/queries.txt \\
        --requests 2000 --concurrency 16 --threads 1

Starts ``serve.py`` on a free 127.0.0.1 port (``--index``, ``--threads``; its log goes to --server-log) or
uses a server already running on this machine (``--url``, loopback only), sends --warmup requests that
are not counted, then exactly --requests requests from --concurrency concurrent connections
(httpx, asyncio): ``GET /search?q=...&k=K`` with the queries of --queries in turn, or with ``--batch N``
``POST /search`` with N queries each. A request is an error unless it gets a 200 with k hits per query.
Prints and writes (--out) the error count, throughput and latency percentiles measured by the client
(request sent -> answer parsed) and the server's own search time (``took_ms``), plus the load average
of the machine before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(f"error: --url {url}: this script only sends load to this machine (127.0.0.1 / localhost)")


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "serve.py", f"index={args.index}", f"port={port}", f"threads={args.threads}", f"k_max={max(100, args.k)}"]
    log = open(args.server_log, "w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return process, url
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"error: serve.py did not start; see {args.server_log}")
            time.sleep(0.5)


async def run_load(url: str, queries: list[str], total: int, concurrency: int, k: int, batch: int, offset: int) -> list[dict]:
    """``total`` requests from ``concurrency`` workers; one record per request."""
    records: list[dict] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            at = (offset + i) * max(batch, 1)
            chosen = [queries[(at + j) % len(queries)] for j in range(max(batch, 1))]
            start = time.perf_counter()
            record = {"ok": False}
            try:
                if batch:
                    response = await client.post("/search", json={"queries": chosen, "k": k})
                else:
                    response = await client.get("/search", params={"q": chosen[0], "k": k})
                answer = response.json()
                record["status"] = response.status_code
                if response.status_code == 200:
                    hits = [r["hits"] for r in answer["results"]] if batch else [answer["hits"]]
                    record["ok"] = len(hits) == len(chosen) and all(len(h) == k for h in hits)
                    record["took_ms"] = answer["took_ms"]
                else:
                    record["error"] = answer.get("error")
            except Exception as err:  # a failed connection or unreadable answer is an error, not a crash
                record["error"] = f"{type(err).__name__}: {err}"
            record["ms"] = (time.perf_counter() - start) * 1000
            records.append(record)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return records


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    stats = {"p50": np.percentile(a, 50), "p90": np.percentile(a, 90), "p99": np.percentile(a, 99), "max": a.max(), "mean": a.mean()}
    return {name: round(float(v), 2) for name, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="index folder: start serve.py on it (on a free 127.0.0.1 port)")
    where.add_argument("--url", help="a server already running on this machine, e.g. http://127.0.0.1:8000")
    parser.add_argument("--queries", required=True, help="text file, one query a line")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=0, help="0: GET one query a request; N: POST N queries a request")
    parser.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted")
    parser.add_argument("--threads", type=int, default=1, help="with --index: serve.py threads= (CPU threads per search)")
    parser.add_argument("--server-log", default="/tmp/serve_load_server.log", help="with --index: where serve.py's output goes")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    queries = [q for q in Path(args.queries).read_text().splitlines() if q.strip()]
    process = None
    if args.index:
        process, url = start_server(args)
    else:
        check_loopback(args.url)
        url = args.url.rstrip("/")
    try:
        health = httpx.get(f"{url}/health", timeout=30).json()
        load_before = os.getloadavg()
        asyncio.run(run_load(url, queries, args.warmup, args.concurrency, args.k, args.batch, offset=0))
        start = time.perf_counter()
        records = asyncio.run(run_load(url, queries, args.requests, args.concurrency, args.k, args.batch, offset=args.warmup))
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    errors = [r for r in records if not r["ok"]]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "url": url,
        "passages": health["passages"],
        "faiss": health["index"]["faiss"]["type"],
        "server_threads": health["threads"],
        "requests": len(records),
        "concurrency": args.concurrency,
        "k": args.k,
        "queries_per_request": max(args.batch, 1),
        "errors": len(errors),
        "error_examples": sorted({str(r.get("error") or r.get("status")) for r in errors})[:5],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(records) / wall, 1),
        "latency_ms": percentiles([r["ms"] for r in records]),
        "server_search_ms": percentiles([r["took_ms"] for r in records if "took_ms" in r]),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    lat, srv = result["latency_ms"], result["server_search_ms"]
    print(f"{result['requests']} requests ({result['queries_per_request']} quer{'y' if args.batch <= 1 else 'ies'} each, k={args.k}) "
          f"at concurrency {args.concurrency} on {result['passages']:,} passages ({result['faiss']}, threads {result['server_threads']})")
    print(f"errors: {result['errors']} {result['error_examples'] or ''}")
    print(f"{result['seconds']} s, {result['requests_per_s']} requests/s")
    print("latency ms (client): " + "  ".join(f"{k} {v:.1f}" for k, v in lat.items()))
    if srv:
        print("search ms (server):  " + "  ".join(f"{k} {v:.1f}" for k, v in srv.items()))
    print(f"load average before {result['load_average_before']} after {result['load_average_after']} ({result['cpus']} CPUs)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
