"""``python -m two_tower.cli.compare RUN_OR_SWEEP_DIRS...``: compare configurations (two_tower/training/compare.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from two_tower.cli.common import drop_stdout, exit_on_error
from two_tower.core.atomic import atomic_write, check_writable, sweep_stale_temps
from two_tower.core.commands import command
from two_tower.core.errors import ConfigError, NotWritableError
from two_tower.training import compare as compare_module
from two_tower.training.compare import compare, find_runs, load_baselines, load_configurations, log_wandb, markdown, plot

OUTPUTS = ("comparison.md", "configurations.csv", "tests.csv", "comparison.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=command("compare"), description=compare_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or sweep dirs of train.py")
    parser.add_argument("--metric", default="test/mrr@10", help="stage/metric: test/* (per_query/test.parquet), val/* (the best validation epoch), val_last/* (the last); any metric column, e.g. ndcg@10 (default: %(default)s)")
    parser.add_argument("--baseline", type=Path, action="append", default=[], help="an evaluate.py output dir (per_query/<retriever>.parquet); give it once per dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write comparison.md/.png and the CSVs (default: none, the table is only printed)")
    parser.add_argument("--alpha", type=float, default=0.05, help="a pair is flagged when both Holm-corrected p-values are below it (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples (default: %(default)s)")
    parser.add_argument("--wandb-project", default=None, help="also log the tables to W&B in this project")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    made_out = args.out is not None and not args.out.exists()
    try:
        _compare(args)
    finally:  # refused (or stopped) before writing: the --out folder check_writable made is not left behind, empty
        if made_out and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()


def _compare(args: argparse.Namespace) -> None:
    with exit_on_error():
        if args.wandb_project:  # before the work and the files: W&B missing, a bad WANDB_MODE, no account
            from two_tower.training.wandb_check import wandb_problem

            problem = wandb_problem()
            if problem:
                raise ConfigError(f"--wandb-project {args.wandb_project}: {problem}")
        if args.out:  # before the work: an existing file there, or a folder that takes no files, is one line
            check_writable(args.out, f"--out {args.out}")
            sweep_stale_temps(args.out)  # an output half-written by a compare that was killed
            taken = [name for name in OUTPUTS if (args.out / name).is_dir()]  # os.replace onto a folder: a traceback after some files
            if taken:
                raise NotWritableError(f"--out {args.out}: {', '.join(taken)} there is a folder, not a file: remove it or choose another --out")
        systems = load_configurations(find_runs(args.dirs), args.metric)
        systems.update(load_baselines(args.baseline, args.metric, taken=set(systems)))
        summary, tests = compare(systems, args.metric, args.alpha, args.resamples)
        text = markdown(summary, tests, args.metric)
        if args.out:  # written before the table is printed: a reader that closes stdout early (| head) leaves them whole
            try:
                with atomic_write(args.out / "comparison.md", "w") as f:
                    f.write(text)
                for name, table in (("configurations.csv", summary), ("tests.csv", tests)):
                    with atomic_write(args.out / name, "w") as f:
                        table.to_csv(f, index=False)
                plot(summary, args.metric, args.out / "comparison.png")
            except OSError as err:  # e.g. the disk filled: each file is whole or absent (written beside, renamed)
                raise NotWritableError(f"--out {args.out}: {err.strerror or err} ({err.filename or ''})") from err
            print(f"Wrote {args.out}/comparison.md, configurations.csv, tests.csv, comparison.png", file=sys.stderr)
        if args.wandb_project:
            log_wandb(summary, tests, args.metric, args.wandb_project, args.out)
        try:
            print(text, flush=True)
        except BrokenPipeError:  # e.g. | head -5: stop quietly, with a pipeline writer's status
            drop_stdout()
            sys.exit(141)


if __name__ == "__main__":
    main()
