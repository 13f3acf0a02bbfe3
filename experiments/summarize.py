"""Collect runs into one table and plots, without W&B.

    python experiments/summarize.py outputs/multirun/2026-11-29_12-00-00 [more run or multirun dirs] --out DIR

A run dir is one with ``.hydra/`` and ``csv/metrics.csv`` (written by the CSV logger: ``logger=csv``, the default, or
``logger=[csv,wandb]``; a ``logger=wandb`` run, or one that failed before it logged, has none, and is left out with
a warning: one line and exit 2 when no run has one); a multirun dir holds numbered job dirs. The table's ``ended``
says whether a run's training ended (a killed or running one shows the epochs it validated). Writes DIR/summary.md, DIR/summary.csv, DIR/val_mrr.png (val/mrr@10 per epoch per
run) and DIR/train_loss.png (training loss per step per run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

HIDDEN = ("data.path", "hydra.", "paths.", "ckpt_path", "negatives.checkpoint")
VAL = ["val/mrr@10", "val/recall@1", "val/recall@10", "val/recall@100", "val/ndcg@10", "val/rerank_mrr@10"]


def find_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for path in paths:
        if (path / ".hydra").is_dir():
            runs.append(path)
        else:
            runs.extend(sorted((p for p in path.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)))
    if not runs:
        raise SystemExit(f"no run dirs (with .hydra/) under {[str(p) for p in paths]}")
    return runs


def overrides(run: Path) -> list[str]:
    found = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    return [o for o in found if not o.lstrip("+~").startswith(HIDDEN)]


def label(run: Path, common: set[str]) -> str:
    """The run's own overrides, without those every run shares (listed once in the table's caption)."""
    return " ".join(o for o in overrides(run) if o not in common) or "(defaults)"


def summarize(run: Path, common: set[str]) -> tuple[dict, pd.DataFrame]:
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    if "val/mrr@10" not in metrics:  # stopped before its first validation (a KeyError before: a probe)
        metrics["val/mrr@10"] = float("nan")
    val = metrics[metrics["val/mrr@10"].notna()].drop_duplicates("epoch", keep="last")  # resumed runs logged by older versions repeat rows
    # a run killed or still training is listed as such (its figures are those of the epochs it validated)
    ended = (run / "per_query" / "fit_ended.json").is_file() or (run / "per_query" / "test.parquet").is_file()
    row = {"run": label(run, common), "dir": str(run), "ended": "yes" if ended else "no", "epochs": len(val)}
    if len(val):
        best = val.loc[val["val/mrr@10"].idxmax()]
        last = val.iloc[-1]
        row.update({k: round(float(last[k]), 4) for k in VAL if k in last})
        row["best val/mrr@10"] = round(float(best["val/mrr@10"]), 4)
        row["best epoch"] = int(best["epoch"])
    if "time/train_seconds" in metrics:
        seconds = metrics["time/train_seconds"].dropna()
        row["train seconds"] = round(float(seconds.iloc[-1]), 1) if len(seconds) else None
    return row, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such run folder: {', '.join(missing)}")
    runs = find_runs(args.paths)
    without = [r for r in runs if not (r / "csv" / "metrics.csv").is_file()]
    # logger=wandb (or none) writes no CSV, nor does a run that failed before logging (a sweep job with a bad
    # learning rate): a FileNotFoundError traceback here before, then the whole summary refused for one such job
    why = ("no csv/metrics.csv, which summarize.py reads: a run that failed or was stopped before it logged, or one "
           "without the CSV logger (logger=csv, the default, or logger=[csv,wandb] for both; a logger=wandb run's metrics are in W&B)")
    if len(without) == len(runs):
        print(f"error: {without[0]}{f' (and {len(without) - 1} more runs)' if len(without) > 1 else ''}: {why}", file=sys.stderr)
        sys.exit(2)
    for run in without:
        print(f"warning: {run} left out: {why}", file=sys.stderr)
    runs = [r for r in runs if r not in without]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    common = set.intersection(*(set(overrides(r)) for r in runs)) if len(runs) > 1 else set()
    for run in runs:
        row, metrics = summarize(run, common)
        rows.append(row)
        curves[row["dir"]] = metrics
    labels = [row["run"] for row in rows]
    for label_ in set(labels):  # runs of one label (another data.path, a repeat) were one row's name and one curve (a probe)
        same = [row for row in rows if row["run"] == label_]
        if len(same) > 1:  # named by their folders below the folder they share (two sweeps' jobs "0" and "0" too)
            shared = os.path.commonpath([row["dir"] for row in same])
            for row in same:
                row["run"] += f" ({os.path.relpath(row['dir'], shared)})"
    names = {row["dir"]: row["run"] for row in rows}
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "summary.csv", index=False)
    caption = f"All runs: {' '.join(sorted(common))}\n\n" if common else ""
    markdown = caption + table.drop(columns=["dir"]).to_markdown(index=False) + "\n"
    (args.out / "summary.md").write_text(markdown)
    print(markdown)

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, m in curves.items():
        name = names[run]
        val = m[m["val/mrr@10"].notna()]
        ax.plot(val["epoch"], val["val/mrr@10"], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="val/mrr@10 (full corpus)", title="Validation MRR@10")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "val_mrr.png", dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, m in curves.items():
        name = names[run]
        if "train/loss_step" in m:
            steps = m[m["train/loss_step"].notna()]
            ax.plot(steps["step"], steps["train/loss_step"], lw=1, label=name)
    ax.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "train_loss.png", dpi=120)


if __name__ == "__main__":
    main()
