"""Mining cost at each size: a table and a plot from mining_bench.py's JSON lines.

    for rows in 5000 20000 82326; do
      python experiments/scale/mining_bench.py --rows $rows --passage-words 40 80 --miner bm25 \
          --mine-queries 1024 --out experiments/scale/mining_scale.jsonl
    done
    python experiments/scale/mining_report.py experiments/scale/mining_scale.jsonl   # -> mining_scale.png + the table
"""

from __future__ import annotations

import json
from pathlib import Path


def main(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()), key=lambda r: r["rows"])
    print("| training rows | passages | prepare s | BM25 index s | mine ms / query (first 1,024) | full pass, extrapolated | peak RSS after mining (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        full_min = r["mine_ms_per_query"] * r["queries"] / 60_000
        print(f"| {r['rows']:,} | {r['passages']:,} | {r['prepare_s']:.0f} | {r['scorer_s']:.0f} | {r['mine_ms_per_query']:.1f} | {full_min:.1f} min | {r['mine_peak_rss_mb']:,.0f} |")
    rows = [r["rows"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(rows, [r["mine_ms_per_query"] for r in runs], "o-")
    left.set(title="BM25 mining: ms per query", xlabel="training rows (8 passages each)", ylabel="ms (one thread, shared machine)")
    right.plot(rows, [r["mine_peak_rss_mb"] / 1024 for r in runs], "o-", color="black")
    right.set(title="peak RSS after mining", xlabel="training rows", ylabel="GB", ylim=(0, None))
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=100)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", nargs="?", default=str(Path(__file__).with_name("mining_scale.jsonl")), help="mining_bench.py's JSON lines")
    main(ap.parse_args().jsonl)
