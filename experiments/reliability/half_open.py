"""Half-open connections against serve.py while real searches run (a load script, not a test).

    python experiments/reliability/half_open.py [--index DIR] [--connections 2000] [--seconds 60]

Starts ``serve.py`` (default settings: header_timeout=5, keep_alive_timeout=5, max_connections=4096) on
a free 127.0.0.1 port, on ``--index`` or on a tiny index built here from synthetic data. Then, for
``--seconds``: ``--connections`` attackers each open a connection, send ``GET /health HTTP/1.1\\r\\nHost: x\\r\\n``
(never the blank line that ends the headers) and wait; when the server closes it they open another, so
``--connections`` are held all the time. Meanwhile ``--clients`` legitimate clients search in turn
(half keep their connection alive, half open a new one a request), each request with a 5 s budget.

Reports: searches sent / answered 200 within 5 s / 5xx / other status / failed (timeout, refused,
reset), client latency p50/p99/max, half-open connections closed by the server (and after how long),
and the server's peak open file descriptors (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"
QUERIES = ["garden castle", "river apple", "how long is a marathon", "ocean wave storm", "music guitar song", "planet star orbit"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_index(folder: Path) -> Path:
    """A tiny synthetic model and its index (about a minute on one core)."""
    run, out = folder / "run", folder / "index"
    common = [f"paths.cache_dir={folder / 'cache'}", "threads=1"]
    subprocess.run([sys.executable, "train.py", "data=synthetic", "embeddings=random", "logger=none", "trainer.max_epochs=2",
                    "+trainer.enable_progress_bar=false", f"hydra.run.dir={run}", *common], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([sys.executable, "index.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"corpus={write_corpus(folder)}", f"out={out}",
                    f"hydra.run.dir={folder / 'index_run'}"], cwd=ROOT, check=True, capture_output=True)
    return out


def write_corpus(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from two_tower.data import synthetic

    texts = list(dict.fromkeys(t for row in synthetic.make_rows(2000, seed=0) for t in row["passages"]["passage_text"]))
    path = folder / "corpus.jsonl"
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return path


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def attacker(port: int, stop: float, stats: dict) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        opened = time.monotonic()
        writer.write(PARTIAL)
        try:
            await writer.drain()
            data = await asyncio.wait_for(reader.read(1024), timeout=max(stop - time.monotonic(), 0.01))
            if data == b"":
                stats["closed_by_server"] += 1
                stats["held_seconds"].append(time.monotonic() - opened)
            else:
                stats["answered"] += 1
        except asyncio.TimeoutError:
            stats["still_open_at_end"] += 1
        except (ConnectionResetError, BrokenPipeError):
            stats["closed_by_server"] += 1
            stats["held_seconds"].append(time.monotonic() - opened)
        finally:
            writer.close()


async def searcher(url: str, stop: float, keep_alive: bool, records: list, offset: int) -> None:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    async with httpx.AsyncClient(base_url=url, timeout=5.0, limits=limits) as client:
        i = offset
        while time.monotonic() < stop:
            start = time.perf_counter()
            record = {}
            try:
                response = await client.get("/search", params={"q": QUERIES[i % len(QUERIES)], "k": 10})
                record["status"] = response.status_code
            except Exception as err:  # timeout (over 5 s), refused, reset: not answered
                record["error"] = type(err).__name__
            record["ms"] = (time.perf_counter() - start) * 1000
            records.append(record)
            i += 1


async def run(port: int, pid: int, connections: int, seconds: float, clients: int) -> dict:
    stats = {"closed_by_server": 0, "answered": 0, "still_open_at_end": 0, "connect_failed": 0, "held_seconds": []}
    records: list[dict] = []
    fds = []
    stop = time.monotonic() + seconds

    async def sample():
        while time.monotonic() < stop:
            fds.append(open_fds(pid))
            await asyncio.sleep(1)

    attackers = [asyncio.create_task(attacker(port, stop, stats)) for _ in range(connections)]
    await asyncio.sleep(2)  # let the half-open connections pile up first
    url = f"http://127.0.0.1:{port}"
    await asyncio.gather(sample(), *(searcher(url, stop, keep_alive=c % 2 == 0, records=records, offset=c) for c in range(clients)))
    await asyncio.gather(*attackers)
    ok = [r for r in records if r.get("status") == 200]
    ms = np.asarray([r["ms"] for r in ok]) if ok else np.zeros(1)
    held = np.asarray(stats.pop("held_seconds")) if stats["closed_by_server"] else np.zeros(1)
    return {
        "half_open_connections": connections,
        "seconds": seconds,
        "searches_sent": len(records),
        "answered_200_within_5s": len(ok),
        "answers_5xx": sum(1 for r in records if r.get("status", 0) >= 500),
        "answers_other_status": sum(1 for r in records if "status" in r and r["status"] != 200 and r["status"] < 500),
        "failed_no_answer": {name: sum(1 for r in records if r.get("error") == name) for name in {r["error"] for r in records if "error" in r}},
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1), "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(ms.max()), 1)},
        "half_open_closed_by_server": stats["closed_by_server"],
        "half_open_held_seconds": {"min": round(float(held.min()), 2), "median": round(float(np.median(held)), 2), "max": round(float(held.max()), 2)},
        "half_open_answered": stats["answered"],
        "attacker_connect_failed": stats["connect_failed"],
        "server_open_fds": {"max": max(fds, default=-1), "at_end": fds[-1] if fds else -1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index folder (default: build a tiny synthetic one)")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--serve-args", nargs="*", default=[], help="extra serve.py settings, e.g. header_timeout=5")
    parser.add_argument("--out", help="write the report (JSON) here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or tiny_index(Path(tmp))
        port = free_port()
        log = open(Path(tmp) / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "serve.py", f"index={index}", f"port={port}", "threads=1", *args.serve_args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).raise_for_status()
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit("error: serve.py did not start:\n" + (Path(tmp) / "serve.log").read_text()[-2000:])
                    time.sleep(0.5)
            report = asyncio.run(run(port, server.pid, args.connections, args.seconds, args.clients))
            report["server_alive_after"] = server.poll() is None and httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
