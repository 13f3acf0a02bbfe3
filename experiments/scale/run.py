"""Where a v1.1-sized run's time and memory go, at several training sizes (issue #14 item 7).

    python experiments/scale/run.py run --rows 5000 20000 82326     # one train.py run per size
    python experiments/scale/run.py report                           # README table + scale.png

Each size runs ``train.py`` on synthetic rows of realistic length (passages of 40-80 filler words plus
keywords, MS MARCO v1.1's ~56 words) for one epoch, GRU towers, in-batch negatives, threads=1, with a
fresh cache (so data preparation is measured), validation rows in v1.1's proportion (10,047 per
82,326). It reads

- preparation seconds: the cache's ``meta.json`` (generation, validation, tokenization, writing);
- epoch and validation seconds: the run's ``time/epoch_train_seconds`` and ``time/validation_seconds``;
- peak RSS: the largest sum, over the run's process and all its descendants (data loader or
  tokenization workers included), of their resident set sizes, sampled from /proc every 0.2 s.

Results go to ``results.json`` beside this file (one entry per size; a rerun replaces it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results.json"
V11_TRAIN, V11_VAL = 82326, 10047


def command(train_rows: int, out: Path, extra: list[str]) -> list[str]:
    val_rows = round(train_rows * V11_VAL / V11_TRAIN)
    return [
        sys.executable, "train.py", "data=synthetic",
        f"data.synthetic_rows.train_rows={train_rows}", f"data.synthetic_rows.val_rows={val_rows}",
        "data.synthetic_rows.num_topics=1500", "data.synthetic_rows.passage_words=[40,80]",
        "encoder=gru", "negatives=in_batch", "trainer.max_epochs=1", "threads=1", "logger=csv",
        f"hydra.run.dir={out / 'run'}", f"paths.cache_dir={out / 'cache'}", *extra,
    ]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> tuple[int, int]:
    """(sum of VmRSS in bytes over ``root`` and its descendants, number of processes)."""
    tree, todo, total, count = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        count += 1
                        break
        except OSError:
            continue
    return total, count


def run(train_rows: int, work: Path, extra: list[str]) -> dict:
    out = work / f"rows{train_rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(train_rows, out, extra)
    print(" ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    with open(out / "stdout.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak, peak_processes, peak_at = 0, 0, 0.0
        with open(out / "rss.csv", "w") as timeline:  # the memory curve: seconds since start, GB, processes
            timeline.write("seconds,rss_gb,processes\n")
            while proc.poll() is None:
                rss, n = tree_rss(proc.pid)
                elapsed = time.perf_counter() - start
                timeline.write(f"{elapsed:.1f},{rss / 1e9:.3f},{n}\n")
                if rss > peak:
                    peak, peak_processes, peak_at = rss, n, elapsed
                time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"error: train.py exited {proc.returncode}; see {out / 'stdout.log'}")
    metrics: dict[str, float] = {}
    for row in csv.DictReader(open(next((out / "run").rglob("metrics.csv")))):
        metrics.update({k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"})
    meta = json.loads(next((out / "cache").rglob("meta.json")).read_text())
    return {
        "train_rows": train_rows,
        "val_rows": round(train_rows * V11_VAL / V11_TRAIN),
        "command": "python " + " ".join(cmd[1:]),
        "preparation_seconds": meta["seconds"],
        "epoch_train_seconds": metrics["time/epoch_train_seconds"],
        "validation_seconds": metrics["time/validation_seconds"],
        "validation_over_epoch": metrics["time/validation_seconds"] / metrics["time/epoch_train_seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(peak / 1e9, 3),
        "processes_at_peak": peak_processes,
        "peak_at_seconds": round(peak_at, 1),
        "val_mrr@10": metrics.get("val/mrr@10"),
    }


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(json.loads(RESULTS.read_text()).values(), key=lambda r: r["train_rows"])
    lines = [
        "| training rows | validation rows | preparation s | epoch s | validation s | validation / epoch | peak RSS (GB, all processes) | val MRR@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['train_rows']:,} | {r['val_rows']:,} | {r['preparation_seconds']:.0f} | {r['epoch_train_seconds']:.0f} | "
            f"{r['validation_seconds']:.1f} | {r['validation_over_epoch']:.2f} | {r['peak_rss_gb']:.2f} | {r['val_mrr@10']:.4f} |"
        )
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r["train_rows"] for r in results]
    for key, label in (("preparation_seconds", "preparation"), ("epoch_train_seconds", "training epoch"), ("validation_seconds", "validation")):
        left.plot(rows, [r[key] for r in results], marker="o", label=label)
    left.set(xlabel="training rows", ylabel="seconds (one run each; shared machine)", title="time")
    left.legend()
    right.plot(rows, [r["peak_rss_gb"] for r in results], marker="o", color="black")
    right.set(xlabel="training rows", ylabel="GB", title="peak RSS, all processes of the run")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(HERE / "scale.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("run")
    p.add_argument("--rows", type=int, nargs="+", default=[5000, 20000, V11_TRAIN])
    p.add_argument("--work", type=Path, default=Path("/tmp/scale_runs"), help="run and cache folders (not committed)")
    p.add_argument("extra", nargs="*", help="more train.py overrides")
    sub.add_parser("report")
    args = parser.parse_args()
    if args.what == "report":
        report()
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for n in args.rows:
        results[str(n)] = run(n, args.work, args.extra)
        print(json.dumps(results[str(n)], indent=2), flush=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
