"""The study's ladder as a plot: each lever's last-epoch val/mrr@10 against BM25 (ladder.png).

    python experiments/dense_vs_bm25/ladder.py [--summary experiments/dense_vs_bm25/summary.csv]

Reads the summary.csv that run.sh writes (experiments/summarize.py); rows are picked by run dir, seeds
are averaged (the bar) and shown as dots. Reference lines: BM25 as evaluated by evaluate.py, with and
without the English stemmer, and the untrained bag alone (bag_ceiling.md), passed as arguments so the
plot only shows figures measured elsewhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
LADDER = [
    ("distill/0", "RNN only (experiment=best_rnn)"),
    ("distill_teacher_t/1", "RNN only + distillation (teacher t=0.1)"),
    ("towers/0", "RNN only, separate towers"),
    ("bag_size/0", "RNN + bag 256-d, mix 0.5"),
    ("bag_size/2", "RNN + bag 2048-d, mix 0.5"),
    ("bag_mix/0", "RNN + bag 1024-d, mix 0.8"),
    ("bag_stem/0", "RNN + stemmed bag 1024-d, mix 0.8"),
    ("bag_stem/1", "RNN + stemmed bag 2048-d, mix 0.8"),
    ("bag_distill/1", "  stemmed 2048-d, t=0.05, + distillation"),
    ("bag_train_vectors/0", "  stemmed 1024-d, trained signatures"),
    ("best_seeds/*", "experiment=best (3 seeds)"),
    ("best_separate_seeds/*", "  ... separate towers (3 seeds)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, default=HERE / "summary.csv")
    parser.add_argument("--bm25", type=float, default=0.8586, help="BM25 val/mrr@10 (evaluate.py retriever=bm25)")
    parser.add_argument("--bm25-stemmed", type=float, default=0.8941, help="BM25 with the English stemmer")
    parser.add_argument("--untrained-bag", type=float, default=0.8591, help="the untrained stemmed 2048-d bag alone (bag_ceiling.md)")
    parser.add_argument("--out", type=Path, default=HERE / "ladder.png")
    args = parser.parse_args()
    table = pd.read_csv(args.summary)
    table["key"] = table["dir"].str.split("/").str[-2:].str.join("/")

    labels, means, points = [], [], []
    for key, label in LADDER:
        if key.endswith("/*"):
            rows = table[table["key"].str.startswith(key[:-1])]
        else:
            rows = table[table["key"] == key]
        if rows.empty:
            raise SystemExit(f"{args.summary}: no run {key}")
        values = rows["val/mrr@10"].tolist()
        labels.append(f"{label}: {sum(values) / len(values):.4f}")
        means.append(sum(values) / len(values))
        points.append(values)

    fig, ax = plt.subplots(figsize=(9, 5.5))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, means, color=["#7a9cc6" if m < args.bm25 else "#4c956c" for m in means])
    for yi, values in zip(y, points):
        if len(values) > 1:
            ax.plot(values, [yi] * len(values), "k.", ms=6)
    ax.axvline(args.bm25, color="#c0392b", ls="--", label=f"BM25 {args.bm25:.4f}")
    ax.axvline(args.bm25_stemmed, color="#8e44ad", ls=":", label=f"BM25 + stemmer {args.bm25_stemmed:.4f}")
    ax.axvline(args.untrained_bag, color="#555555", ls="-.", lw=1, label=f"untrained stemmed bag alone {args.untrained_bag:.4f}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0.4, 0.92)
    ax.set_xlabel("val/mrr@10, last epoch (marco7k validation, 5,054 passages)")
    ax.set_title("Dense two-tower vs BM25: what each lever bought")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
