"""/health latency while clients flood POST /search with large JSON bodies: serve.py from one or two code trees
(a clone at another commit), started in turn on a free port over the same index folder, each measured ``--rounds``
times, alternating, so the figures come from one run.

    python experiments/serve/big_bodies.py --index INDEX_DIR --trees /tmp/old_clone .

Each round: ``--clients`` connections each POST a body of ``--lists`` empty lists (``{"queries": [[], ...]}``, 417 KB
for 139,000: under the default max_body_bytes, refused 422 after its parse) in a loop; after 2 s, /health is asked
every 0.1 s for ``--seconds`` on its own connection, then one search. Prints the median and 90th percentile of /health.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import httpx


def start(tree: str, index: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, os.path.join(tree, "serve.py"), f"index={index}", "port=0", "threads=1"], cwd=tree, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # drained, not shown
            return process, f"http://127.0.0.1:{found.group(1)}"
    raise SystemExit(f"error: serve.py from {tree} did not start")


def measure(url: str, body: bytes, clients: int, seconds: float) -> dict:
    stop, statuses, lock = threading.Event(), {}, threading.Lock()

    def flood() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                status = client.post(url + "/search", content=body, headers={"content-type": "application/json"}).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=flood) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    latencies = []
    with httpx.Client(timeout=120) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            assert client.get(url + "/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.1)
        start = time.perf_counter()
        search_status = client.get(url + "/search", params={"q": "garden"}).status_code
        search = time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"median": statistics.median(latencies), "p90": latencies[int(0.9 * len(latencies))], "probes": len(latencies),
            "bodies": statuses, "search": (search_status, search)}


def flooded(tree: str, index: str, body: bytes, clients: int, seconds: float) -> dict:
    """``measure`` on a serve.py of ``tree`` started for it, stopped after."""
    process, url = start(tree, index)
    try:
        return measure(url, body, clients, seconds)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--trees", nargs="+", default=["."])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--lists", type=int, default=139_000)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    body = ('{"queries": [' + ",".join(["[]"] * args.lists) + "]}").encode()
    medians: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for round_ in range(args.rounds):
        for tree in args.trees:
            seen = flooded(tree, args.index, body, args.clients, args.seconds)
            medians[tree].append(seen["median"])
            print(f"round {round_} {tree}: /health median {seen['median'] * 1e3:.1f} ms, p90 {seen['p90'] * 1e3:.1f} ms ({seen['probes']} asked); "
                  f"{len(body) / 1e3:.0f} KB bodies answered {seen['bodies']}; a search then: {seen['search'][0]} in {seen['search'][1] * 1e3:.0f} ms", flush=True)
    overall = {tree: statistics.median(values) for tree, values in medians.items()}
    print("median /health: " + ", ".join(f"{tree} {value * 1e3:.1f} ms" for tree, value in overall.items()))
    if len(args.trees) == 2:
        first, second = overall.values()
        print(f"ratio {args.trees[0]} / {args.trees[1]}: {first / second:.1f}x")


if __name__ == "__main__":
    main()
