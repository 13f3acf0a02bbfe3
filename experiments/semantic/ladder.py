"""The semantic ladder as a plot (ladder.png): each step's val/mrr@10, the mean of its seeds as a bar and
every seed as a dot, the RNN path alone and with the bag-of-words path, against stemmed BM25 and the teacher.

    python experiments/semantic/ladder.py --step "RNN path: GloVe 6B 50d" 5 RUN RUN RUN \\
        --step "RNN path: distilled + skip" 2 RUN RUN RUN ... [--bm25-stemmed 0.8941] [--teacher 0.9565]

Each ``--step LABEL EPOCH RUN...`` reads ``RUN/csv/metrics.csv`` (train.py's CSV logger) and takes
val/mrr@10 after epoch EPOCH (1-based: the recipe's own length), so the plot shows only what the runs logged.
Labels starting "RNN path" are drawn in one colour, the others in another. ``experiments/semantic/run.sh``
writes the runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def val_mrr(run: Path, epoch: int) -> float:
    """val/mrr@10 logged after ``epoch`` (1-based) in one run."""
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        fail(f"{path}: no such file (a train.py run with logger=csv)")
    table = pd.read_csv(path)
    if "val/mrr@10" not in table:
        fail(f"{path}: no val/mrr@10 column")
    logged = table.dropna(subset=["val/mrr@10"]).groupby("epoch")["val/mrr@10"].last()
    if epoch - 1 not in logged.index:
        fail(f"{path}: no val/mrr@10 after epoch {epoch} (epochs logged: {[int(e) + 1 for e in logged.index]})")
    return float(logged.loc[epoch - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", nargs="+", action="append", required=True, metavar="LABEL EPOCH RUN", help="a step: its label, the epoch to read, its runs (one a seed)")
    parser.add_argument("--bm25-stemmed", type=float, default=0.8941, help="stemmed BM25's val/mrr@10 (evaluate.py retriever=bm25_stemmed)")
    parser.add_argument("--teacher", type=float, default=0.9565, help="the teacher's val/mrr@10 (evaluate.py retriever=teacher)")
    parser.add_argument("--out", type=Path, default=HERE / "ladder.png")
    args = parser.parse_args()

    labels, means, points, colours = [], [], [], []
    for step in args.step:
        if len(step) < 3 or not step[1].isdigit():
            fail(f"--step {' '.join(step)}: expected LABEL EPOCH RUN [RUN ...]")
        label, epoch, runs = step[0], int(step[1]), [Path(r) for r in step[2:]]
        values = [val_mrr(run, epoch) for run in runs]
        mean = sum(values) / len(values)
        labels.append(f"{label} ({len(values)} seeds): {mean:.4f}")
        means.append(mean)
        points.append(values)
        colours.append("#7a9cc6" if label.startswith("RNN path") else "#4c956c")

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.8))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, means, color=colours)
    for yi, values in zip(y, points):
        ax.plot(values, [yi] * len(values), "k.", ms=6)
    ax.axvline(args.bm25_stemmed, color="#8e44ad", ls=":", label=f"BM25 + English stemmer {args.bm25_stemmed:.4f}")
    ax.axvline(args.teacher, color="#c0392b", ls="--", label=f"teacher (all-MiniLM-L6-v2) {args.teacher:.4f}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0.5, 0.97)
    ax.set_xlabel("val/mrr@10 at the recipe's epoch (marco7k validation, 5,054 passages, exact)")
    ax.set_title("Semantic towers, step by step (bar: mean of the seeds; dots: each seed)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
