"""kill -9 at random instants of a training run, then resume: same result, no stray temp file (a script,
not a test).

    python experiments/reliability/kill_resume.py [--trials 20] [--seed 0] [--work /tmp/kill_resume]

A 2-epoch synthetic run (``data=synthetic embeddings=random threads=1 trainer.max_epochs=2``) is run
once uninterrupted (the reference; it also fills the shared cache). Each trial starts the same run in a
fresh run folder, sends SIGKILL at an instant drawn uniformly from (0, reference wall time), then runs the
same command with ``ckpt_path=last`` (or from scratch when the kill came before the first checkpoint)
until it completes. ``$TMPDIR`` is a folder on /dev/shm (a tmpfs: another filesystem than the run and
cache folders), where Lightning's own checkpoint writer would build its temporary files.

Checked per trial: the resumed run exits 0; its final validation metrics of every epoch equal the
reference's exactly; no temporary file (``.tmp-``) is left in the run folder or the cache, and nothing
in $TMPDIR. Prints a table and a summary; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
RUN = ["data=synthetic", "embeddings=random", "threads=1", "trainer.max_epochs=2", "logger=csv", "+trainer.enable_progress_bar=false"]
METRICS = ("val/mrr@10", "val/recall@10", "val/ndcg@10")


def command(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", *RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", *extra]


def final_metrics(run_dir: Path) -> dict:
    frame = pd.read_csv(run_dir / "csv" / "metrics.csv")
    val = frame[frame["val/mrr@10"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch")
    return {int(row["epoch"]): {m: float(row[m]) for m in METRICS} for _, row in val.iterrows()}


def temps(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob("*") if ".tmp" in p.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/kill_resume", help="run and cache folders go here (not on /dev/shm)")
    parser.add_argument("--tmpdir", default="/dev/shm/kill_resume_tmp", help="$TMPDIR for the runs (another filesystem)")
    parser.add_argument("--out")
    args = parser.parse_args()

    work, tmpdir = Path(args.work), Path(args.tmpdir)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(tmpdir, ignore_errors=True)
    work.mkdir(parents=True)
    tmpdir.mkdir(parents=True)
    if os.stat(work).st_dev == os.stat(tmpdir).st_dev:
        print(f"warning: {work} and {tmpdir} are on the same filesystem", file=sys.stderr)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    cache = work / "cache"

    start = time.monotonic()
    subprocess.run(command(work / "reference", cache), cwd=ROOT, env=env, check=True, capture_output=True)
    # The reference filled the cache; time a second uninterrupted run (cache hit) to draw kill instants from.
    start = time.monotonic()
    subprocess.run(command(work / "reference2", cache), cwd=ROOT, env=env, check=True, capture_output=True)
    duration = time.monotonic() - start
    want = final_metrics(work / "reference")
    assert final_metrics(work / "reference2") == want, "two uninterrupted runs differ: not deterministic"
    print(f"reference: {duration:.1f}s, {want}", flush=True)

    rng = random.Random(args.seed)
    rows = []
    for trial in range(args.trials):
        run_dir = work / f"trial{trial:02d}"
        at = rng.uniform(0, duration)
        proc = subprocess.Popen(command(run_dir, cache), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(at)
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = run_dir / "checkpoints" / "last.ckpt"
        left_after_kill = temps(run_dir, cache)
        resumed = subprocess.run(command(run_dir, cache, *(["ckpt_path=last"] if last.exists() else [])), cwd=ROOT, env=env, capture_output=True, text=True)
        got = final_metrics(run_dir) if resumed.returncode == 0 else None
        stray = temps(run_dir, cache) + [str(p) for p in tmpdir.rglob("*") if p.is_file()]
        row = {
            "trial": trial,
            "kill_at_s": round(at, 2),
            "finished_before_kill": finished_first,
            "resumed_from": "last.ckpt" if last.exists() else "scratch",
            "temps_after_kill": len(left_after_kill),
            "exit": resumed.returncode,
            "identical": got == want,
            "stray_temps": stray,
        }
        if resumed.returncode != 0:
            row["stderr"] = resumed.stderr[-500:]
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "trials": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "resumed_from_last_ckpt": sum(r["resumed_from"] == "last.ckpt" for r in rows),
        "temps_left_by_kills": sum(r["temps_after_kill"] for r in rows),
        "stray_temps_after_resume": sum(len(r["stray_temps"]) for r in rows),
        "nonzero_exits": sum(r["exit"] != 0 for r in rows),
        "reference_seconds": round(duration, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "trials": rows, "reference": want}, indent=2) + "\n")


if __name__ == "__main__":
    main()
