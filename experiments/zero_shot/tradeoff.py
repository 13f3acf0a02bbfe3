"""In domain against out of domain: every ranking of `evaluate.py` placed by its MS MARCO MRR@10 (x) and its
zero-shot nDCG@10 (y), one panel per pair of evaluations, means over seeds, each seed a faint dot.

    python experiments/zero_shot/tradeoff.py OUT.png \
        --panel "marco7k validation (seeds 1, 2, 42)" VAL_1,VAL_2,VAL_42 CRAN_1,CRAN_2,CRAN_42 \
        --panel "held-out queries (seed 42)" HELDOUT_42 CRAN_HELDOUT_42 0.93 \
        --zero-shot-target 0.42

Each folder is an `evaluate.py ... out=DIR` (its metrics.json); the in-domain and zero-shot folders of a panel
pair up by position (the same checkpoint). A panel's optional fourth value draws a vertical target line;
`--zero-shot-target` a horizontal one on every panel. Rankings present in every folder of a panel are drawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Short names on the plot; a ranking not listed keeps its evaluate.py name.
LABELS = {
    "dense": "dense",
    "hybrid_weighted": "hybrid",
    "hybrid_rrf": "hybrid (RRF)",
    "bm25": "BM25",
    "bm25_stemmed": "BM25 stemmed",
    "dense_maxsim": "MaxSim",
    "hybrid_maxsim": "hybrid + MaxSim",
    "dense_prf": "feedback",
    "dense_smoothed": "smoothing",
    "dense_smoothed_prf": "smoothing + feedback",
    "hybrid_smoothed": "hybrid, smoothed",
    "teacher": "teacher (MiniLM)",
    "teacher_prf": "teacher + feedback",
}
# Label offsets (points) for rankings whose points sit near another's; the rest go up and right.
OFFSETS = {"hybrid_smoothed": (5, -11), "dense_maxsim": (5, -11), "hybrid_weighted": (8, -3), "dense_smoothed": (-52, 5)}
# Rankings that index folders and evaluate.py give by default (filled); the rest are options (hollow).
DEFAULTS = {"dense", "hybrid_weighted"}
BASELINES = {"bm25", "bm25_stemmed", "teacher", "teacher_prf"}


def read(folder: str) -> dict[str, dict[str, float]]:
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such file (an evaluate.py out= folder)")
    return json.loads(path.read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--panel", nargs="+", action="append", required=True, metavar="NAME IN_DOMAIN ZERO_SHOT [X_TARGET]")
    parser.add_argument("--zero-shot-target", type=float)
    parser.add_argument("--in-domain-metric", default="mrr@10")
    parser.add_argument("--zero-shot-metric", default="ndcg@10")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(args.panel), figsize=(6.5 * len(args.panel), 5.5), squeeze=False)
    for ax, spec in zip(axes[0], args.panel):
        if len(spec) not in (3, 4):
            raise SystemExit(f"error: --panel {' '.join(spec)}: give NAME IN_DOMAIN_DIRS ZERO_SHOT_DIRS [X_TARGET]")
        name, ins, outs = spec[0], spec[1].split(","), spec[2].split(",")
        if len(ins) != len(outs):
            raise SystemExit(f"error: --panel {name!r}: {len(ins)} in-domain folders but {len(outs)} zero-shot ones (they pair by position)")
        pairs = [(read(i), read(o)) for i, o in zip(ins, outs)]
        rankings = [r for r in pairs[0][0] if all(r in a and r in b for a, b in pairs)]
        print(f"## {name}\n\n| ranking | {args.in_domain_metric} | {args.zero_shot_metric} |\n|---|---|---|")
        for ranking in rankings:
            xs = np.array([a[ranking][args.in_domain_metric] for a, _ in pairs])
            ys = np.array([b[ranking][args.zero_shot_metric] for _, b in pairs])
            colour = "tab:gray" if ranking in BASELINES else ("tab:blue" if ranking in DEFAULTS else "tab:orange")
            ax.scatter(xs, ys, s=10, color=colour, alpha=0.35, linewidths=0)
            ax.scatter([xs.mean()], [ys.mean()], s=60, color=colour if ranking in DEFAULTS | BASELINES else "white", edgecolors=colour, linewidths=1.5, zorder=3)
            ax.annotate(LABELS.get(ranking, ranking), (xs.mean(), ys.mean()), textcoords="offset points", xytext=OFFSETS.get(ranking, (5, 4)), fontsize=8)
            print(f"| {ranking} | {xs.mean():.4f} | {ys.mean():.4f} |")
        print()
        if len(spec) == 4:
            ax.axvline(float(spec[3]), color="tab:red", linestyle="--", linewidth=1)
        if args.zero_shot_target is not None:
            ax.axhline(args.zero_shot_target, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"MS MARCO {args.in_domain_metric} (in domain)")
        ax.set_ylabel(f"Cranfield {args.zero_shot_metric} (zero-shot)")
        ax.grid(alpha=0.3)
    fig.suptitle("blue: default rankings; hollow orange: options; grey: baselines; dashed red: the issues' targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
