"""Memory and time of a burst of requests against serve.py, for one set of settings (e.g. ``concurrency=40``).

    python experiments/serve/concurrency_memory.py INDEX_DIR QUERIES.jsonl [serve.py settings ...]
    python experiments/serve/concurrency_memory.py INDEX_DIR QUERIES.jsonl concurrency=40

Starts ``serve.py index=INDEX_DIR`` on a free port, sends ``--requests`` requests from ``--clients`` client
threads (every third a POST batch of 16 queries at k=100, the others a GET of one query at k=10; queries from
the BEIR-style jsonl's ``text`` fields), and prints the status codes, the server's resident memory (VmRSS)
before and after, and the wall time. Run the settings to compare one right after the other.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("queries", help="a jsonl file with a text field per line (a BEIR queries.jsonl)")
    ap.add_argument("settings", nargs="*", help="serve.py settings, e.g. concurrency=40")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_intermixed_args()  # options before or after the settings
    queries = [json.loads(line)["text"] for line in open(args.queries, encoding="utf-8") if line.strip()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "serve.py", f"index={args.index}", f"port={port}", *args.settings], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rss_gb() -> float:
        return int(Path(f"/proc/{server.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1e6

    def one(i: int) -> int:
        if i % 3 == 0:
            batch = [queries[(i + j) % len(queries)] for j in range(16)]
            return httpx.post(f"{url}/search", json={"queries": batch, "k": 100}, timeout=600).status_code
        return httpx.get(f"{url}/search", params={"q": queries[i % len(queries)], "k": 10}, timeout=600).status_code

    try:
        while True:
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(f"serve.py exited with status {server.returncode}")
                time.sleep(0.5)
        before, start = rss_gb(), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            codes = list(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - start
        print(f"settings {args.settings or '(defaults)'}: status codes {dict(sorted((c, codes.count(c)) for c in set(codes)))}, "
              f"RSS {before:.2f} GB before, {rss_gb():.2f} GB after, {seconds:.0f} s for {args.requests} requests from {args.clients} clients")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
