"""The comparison command on synthetic per-query results: it flags a clearly better configuration, does
not flag an A/A comparison, groups seeds by configuration key, and refuses unpaired runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from two_tower.core import per_query
from two_tower.cli.compare import main
from two_tower.training.compare import System, compare, holm, mean_ci
from two_tower.core.config_key import config_key
from tests.conftest import ROOT

QUERIES = 300


def difficulty(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.9, QUERIES)


def seed_table(base: np.ndarray, shift: float, seed: int) -> pd.DataFrame:
    """One run: each query's value = its difficulty + the configuration's shift + seed noise, in [0, 1]."""
    rng = np.random.default_rng(1000 + seed)
    values = np.clip(base + shift + rng.normal(0, 0.15, QUERIES), 0, 1)
    return per_query.frame([f"q{i}" for i in range(QUERIES)], [f"query {i}" for i in range(QUERIES)], {"mrr@10": values})


def write_run(run, overrides: list[str], table: pd.DataFrame, cwd: str | None = None) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if cwd is not None:  # as Hydra's hydra.yaml records it
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": cwd}}}))
    per_query.write(table, run / "per_query" / "test.parquet")


def test_config_key_drops_the_seed_and_run_settings():
    assert config_key(["encoder=gru", "seed=3", "paths.cache_dir=/c", "threads=1", "hydra.run.dir=y", "loss.temperature=0.05"]) == "encoder=gru loss.temperature=0.05"
    assert config_key(["seed=1"]) == config_key(["seed=2"]) == "(defaults)"
    assert config_key(["seed_words=3"]) == "seed_words=3"  # only the seed key itself
    # what a step's memory, threads and processes are, and where caches go: the same rows, pools and vectors (two runs
    # differing only there were two configurations, and a resume on a smaller machine was refused: a probe)
    resources = ["data.tokenize_workers=2", "data.eval_batch_size=64", "negatives.max_score_mb=64", "negatives.passage_block_mb=8",
                 "negatives.batch_size=32", "negatives.cache_dir=/x", "teacher.threads=2", "teacher.batch_size=8", "teacher.cache_dir=/y"]
    assert config_key(["negatives=bm25", *resources]) == "negatives=bm25"
    from two_tower.core.config_key import changed_settings

    trained = {"negatives": {"max_score_mb": 256, "margin": None}, "data": {"tokenize_workers": 1}, "teacher": {"threads": None}}
    resumed = {"negatives": {"max_score_mb": 64, "margin": 0.1}, "data": {"tokenize_workers": 2}, "teacher": {"threads": 2}}
    assert [name for name, _, _ in changed_settings(trained, resumed)] == ["negatives.margin"]
    # trainer=ddp adds sync_batchnorm: a run resumed on another number of processes was refused (the docs allow it)
    one, ddp = {"trainer": {"devices": 1}}, {"trainer": {"devices": 2, "strategy": {"_target_": "x"}, "sync_batchnorm": False}}
    assert changed_settings(one, ddp) == changed_settings(ddp, one) == []


def test_config_key_keeps_the_data_trained_on():
    """data.path changes what is learnt: kept, and absolute, so one folder named from two places is one key."""
    assert config_key(["encoder=gru", "data.path=/data/carved"]) == "data.path=/data/carved encoder=gru"
    assert config_key(["data.path=/data/carved"]) != config_key(["data.path=/data/full"]) != config_key([])
    from_repo = config_key(["data.path=../shared/marco7k", "seed=1"], cwd="/work/main")
    from_elsewhere = config_key(["data.path=/work/shared/marco7k/", "seed=2"], cwd="/tmp")
    assert from_repo == from_elsewhere == "data.path=/work/shared/marco7k"


def test_holm_and_interval_match_worked_examples():
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5*2 = 1.0 caps, and the larger p may not be smaller
    mean, low, high = mean_ci(np.array([0.85, 0.86, 0.87]))
    half = 4.302653 * 0.01 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((0.86, 0.86 - half, 0.86 + half), abs=1e-6)


def test_flags_a_clearly_better_configuration_against_a_baseline(tmp_path, capsys):
    base = difficulty()
    sweep = tmp_path / "sweep"
    for i, seed in enumerate((1, 2, 3)):
        write_run(sweep / str(i), ["encoder=lstm", f"seed={seed}"], seed_table(base, 0.10, seed))
        write_run(sweep / str(3 + i), ["encoder=gru", f"seed={seed}"], seed_table(base, 0.0, seed))
    baseline = tmp_path / "eval"
    per_query.write(seed_table(base, -0.10, 99), baseline / "per_query" / "bm25.parquet")  # clearly worse
    out = tmp_path / "cmp"
    main([str(sweep), "--metric", "test/mrr@10", "--baseline", str(baseline), "--out", str(out), "--resamples", "2000"])
    printed = capsys.readouterr().out
    summary, tests = pd.read_csv(out / "configurations.csv"), pd.read_csv(out / "tests.csv")
    assert summary.set_index("system")["runs"].to_dict() == {"encoder=lstm": 3, "encoder=gru": 3, "bm25": 1}
    lstm = summary.set_index("system").loc["encoder=lstm"]
    assert lstm["ci_low"] < lstm["test/mrr@10"] < lstm["ci_high"]
    flag = [c for c in tests.columns if c.startswith("significant")][0]
    result = {(r["A"], r["B"]): r for r in tests.to_dict("records")}
    assert len(result) == 3  # lstm-gru, lstm-bm25, gru-bm25 (no baseline-baseline pair)
    assert result[("encoder=lstm", "encoder=gru")][flag] and result[("encoder=lstm", "bm25")][flag]
    assert result[("encoder=lstm", "encoder=gru")]["A - B"] == pytest.approx(0.1, abs=0.02)
    assert result[("encoder=gru", "bm25")][flag] and result[("encoder=gru", "bm25")]["A - B"] > 0
    assert "| encoder=lstm | 3 |" in printed and "| bm25 (baseline) | 1 |" in printed
    assert (out / "comparison.png").stat().st_size > 1000 and printed == (out / "comparison.md").read_text() + "\n"  # "Wrote ..." is on stderr


def test_seed_tests_are_holm_corrected_over_the_pairs_that_have_one():
    """A pair with one run a side has no seed test; it counted in the Holm family as p = 1 (3 x the one real p
    in a probe's table of a 3-seed configuration, a 1-seed one and a baseline). Seeds that agree exactly have
    the interval [mean, mean] (scipy's is nan at zero spread: the table showed none)."""
    base = difficulty()
    systems = {"A": System("A", ["a"] * 3, [seed_table(base, 0.05, s) for s in range(3)]),
               "D": System("D", ["d"] * 3, [seed_table(base, 0.02, s) for s in range(3, 6)]),
               "B": System("B", ["b"], [seed_table(base, 0.0, 7)]),
               "bm25": System("bm25", ["x"], [seed_table(base, 0.0, 9)], baseline=True)}
    _, tests = compare(systems, "test/mrr@10", resamples=200)
    tested = tests["p (seeds)"].notna()
    assert tested.sum() == 3 and len(tests) == 6  # A-D, A-bm25, D-bm25; B (one run) has no seed test against any
    assert tests.loc[tested, "Holm p (seeds)"].tolist() == pytest.approx(holm(tests.loc[tested, "p (seeds)"].tolist()))
    assert tests.loc[~tested, "Holm p (seeds)"].isna().all()
    assert mean_ci(np.array([0.5, 0.5, 0.5])) == (0.5, 0.5, 0.5)


def halves(base: np.ndarray, first_seed: int) -> dict[str, System]:
    tables = [seed_table(base, 0.0, seed) for seed in range(first_seed, first_seed + 6)]
    return {"half A": System("half A", ["a"] * 3, tables[:3]), "half B": System("half B", ["b"] * 3, tables[3:])}


def test_does_not_flag_an_a_over_a_comparison():
    """One configuration's 6 seeds split into two halves, each averaged over its 3 seeds first."""
    base = difficulty()
    systems = halves(base, 0)
    _, tests = compare(systems, "test/mrr@10", resamples=2000)
    row = tests.iloc[0]
    assert not row["significant (Holm, alpha=0.05)"]
    assert row["p (randomization)"] > 0.05 and row["p (t-test)"] > 0.05
    assert abs(row["A - B"]) < 0.02
    # Over 20 independent A/A comparisons the test flags about alpha of them (P(>= 4 of 20) = 1.6% at 5%).
    flagged = [compare(halves(difficulty(r), 100 * r), "test/mrr@10", resamples=1000)[1].iloc[0]["significant (Holm, alpha=0.05)"] for r in range(1, 21)]
    assert sum(flagged) <= 3
    # The same halves with a real difference are flagged: the A/A result is not for lack of power.
    shifted = {"half A": systems["half A"], "half B": System("half B", ["b"] * 3, [seed_table(base, 0.05, s) for s in range(3, 6)])}
    assert compare(shifted, "test/mrr@10", resamples=2000)[1].iloc[0]["significant (Holm, alpha=0.05)"]


def test_runs_on_different_queries_are_refused_in_one_line(tmp_path, capsys):
    base = difficulty()
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], seed_table(base, 0.0, 1))
    other = seed_table(base, 0.0, 2)
    other.loc[0, "query"] = "another query"
    write_run(tmp_path / "b", ["encoder=lstm", "seed=1"], other)
    out = tmp_path / "out" / "compare"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "q0" in err[0] and "another query" in err[0]
    # a validation baseline against runs' test/* (both numbered 0..n-1) read as one query's typo; now it says what differs
    assert f"(1 of {QUERIES} queries differ): compare runs on the same split" in err[0], err[0]
    assert not out.exists()  # refused: no empty --out folder left (a probe); its parent, made on the way, may stay
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a"), "--metric", "val/mrr@10"])  # no per_query/val_best.parquet in the run
    assert "all skipped, e.g. " in (err := capsys.readouterr().err.splitlines()[-1]) and "no per_query/val_best.parquet" in err


def test_an_unfinished_run_is_left_out_and_said(tmp_path, caplog):
    base = difficulty()
    for seed in (1, 2):
        write_run(tmp_path / str(seed), ["encoder=gru", f"seed={seed}"], seed_table(base, 0.0, seed))
    (tmp_path / "3" / ".hydra").mkdir(parents=True)
    (tmp_path / "3" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["encoder=gru", "seed=3"]))  # still training
    from two_tower.training.compare import find_runs, load_configurations

    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert len(systems["encoder=gru"].tables) == 2
    assert any("skipped" in r.getMessage() and str(tmp_path / "3") in r.getMessage() for r in caplog.records)


def test_runs_on_other_data_are_other_configurations(tmp_path, capsys):
    """The probe's case: one seed trained on a carved train split and on the full one, scored on the same
    validation queries, is two configurations of one run each (no interval), not one of two seeds."""
    base = difficulty()
    write_run(tmp_path / "t1", ["data.path=carved", "data.max_train_rows=500", "seed=42"], seed_table(base, 0.0, 1), cwd="/w")
    write_run(tmp_path / "t2", ["data.path=/w/full", "data.max_train_rows=500", "seed=42"], seed_table(base, 0.0, 2), cwd="/w")
    write_run(tmp_path / "t3", ["data.path=../w/full", "data.max_train_rows=500", "seed=43"], seed_table(base, 0.0, 3), cwd="/x")
    out = tmp_path / "cmp"
    main([str(tmp_path / d) for d in ("t1", "t2", "t3")] + ["--metric", "test/mrr@10", "--out", str(out), "--resamples", "200"])
    summary = pd.read_csv(out / "configurations.csv").set_index("system")
    assert summary["runs"].to_dict() == {"data.max_train_rows=500 data.path=/w/carved": 1, "data.max_train_rows=500 data.path=/w/full": 2}
    assert np.isnan(summary.loc["data.max_train_rows=500 data.path=/w/carved", "ci_low"])
    assert "| data.max_train_rows=500 data.path=/w/carved | 1 |" in capsys.readouterr().out


def test_one_seed_of_one_configuration_twice_is_refused_in_one_line(tmp_path, capsys):
    base = difficulty()
    write_run(tmp_path / "a", ["encoder=gru", "seed=7"], seed_table(base, 0.0, 1))
    write_run(tmp_path / "b", ["encoder=gru", "seed=8"], seed_table(base, 0.0, 2))
    write_run(tmp_path / "c", ["seed=7", "encoder=gru"], seed_table(base, 0.0, 3))  # a copy, or the same command again
    write_run(tmp_path / "d", ["encoder=lstm", "seed=7"], seed_table(base, 0.0, 4))  # another configuration: fine
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--resamples", "200"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert str(tmp_path / "a") in err[0] and str(tmp_path / "c") in err[0] and "seed=7" in err[0]
    # The seed of a run without a seed= override is its config's (train.yaml's default, 42).
    for name in ("e", "f"):
        write_run(tmp_path / "defaults" / name, [], seed_table(base, 0.0, 5))
        (tmp_path / "defaults" / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 42}))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "defaults")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed=42" in err[0] and str(tmp_path / "defaults" / "f") in err[0]


# ------------------------------------------------------------------------------------------ review round


def seed_shifted(base: np.ndarray, shift: float, seeds, seed_sd: float, rng_seed: int) -> list[pd.DataFrame]:
    """Runs whose seeds move every query together (seed_sd): what short or small runs look like."""
    rng = np.random.default_rng(rng_seed)
    return [seed_table(base, shift + rng.normal(0, seed_sd), s) for s in seeds]


def test_seed_to_seed_spread_is_tested_too():
    """A/A with seed-level shifts: averaging seeds then testing over queries alone flags them often (the
    probe: 23% of real A/A splits); flagged only when the runs' means differ beyond their spread too."""
    base = difficulty()
    flagged, query_only = 0, 0
    for r in range(20):
        tables = seed_shifted(base, 0.0, range(100 * r, 100 * r + 6), 0.02, r)
        _, tests = compare({"A": System("A", ["a"] * 3, tables[:3]), "B": System("B", ["b"] * 3, tables[3:])}, "test/mrr@10", resamples=500)
        flagged += bool(tests.iloc[0]["significant (Holm, alpha=0.05)"])
        query_only += bool(tests.iloc[0]["Holm p (randomization)"] < 0.05)
    assert query_only >= 8 and flagged <= 2, (query_only, flagged)
    # a real difference larger than the seed spread is still flagged
    tables_a, tables_b = seed_shifted(base, 0.15, range(3), 0.02, 1), seed_shifted(base, 0.0, range(3, 6), 0.02, 2)
    _, tests = compare({"A": System("A", ["a"] * 3, tables_a), "B": System("B", ["b"] * 3, tables_b)}, "test/mrr@10", resamples=500)
    assert tests.iloc[0]["significant (Holm, alpha=0.05)"]


def test_seed_test_matches_scipy_and_needs_two_runs():
    from scipy import stats

    from two_tower.training.compare import seed_test

    a, b = np.array([0.50, 0.52, 0.51]), np.array([0.45, 0.47, 0.44, 0.46])
    assert seed_test(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert seed_test(a, np.array([0.40]), b_fixed=True) == pytest.approx(stats.ttest_1samp(a, 0.40).pvalue)
    assert np.isnan(seed_test(np.array([0.5]), b)) and np.isnan(seed_test(np.array([0.5]), np.array([0.4]), b_fixed=True))


def test_one_run_against_a_baseline_is_reported_not_flagged(tmp_path, capsys):
    base = difficulty()
    write_run(tmp_path / "run", ["encoder=gru", "seed=1"], seed_table(base, 0.2, 1))
    per_query.write(seed_table(base, -0.1, 99), tmp_path / "eval" / "per_query" / "bm25.parquet")
    main([str(tmp_path / "run"), "--baseline", str(tmp_path / "eval"), "--resamples", "500"])
    printed = capsys.readouterr().out
    assert "| encoder=gru | bm25 | +0.2" in printed and "| n/a (1 run) |" in printed and printed.rstrip().endswith("| no |")


def test_configurations_of_one_or_two_runs_are_warned_of_and_drawn_without_a_bar(tmp_path, capsys, caplog):
    """One run has no interval (the table's cell was blank, the plot drew zero-width caps: a tight-looking
    interval); two runs have a t interval on 1 degree of freedom (12.7 x the standard error): both are said."""
    import logging

    import matplotlib.pyplot as plt

    base = difficulty()
    write_run(tmp_path / "one", ["encoder=gru", "seed=1"], seed_table(base, 0.0, 1))
    for seed in (1, 2):
        write_run(tmp_path / f"two{seed}", ["encoder=lstm", f"seed={seed}"], seed_table(base, 0.05, seed))
    drawn = []
    real_errorbar = plt.Axes.errorbar

    def errorbar(ax, x, y, *args, **kwargs):
        drawn.append(len(np.atleast_1d(x)))
        return real_errorbar(ax, x, y, *args, **kwargs)

    with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Axes, "errorbar", errorbar)
        main([str(tmp_path / "one"), str(tmp_path / "two1"), str(tmp_path / "two2"), "--resamples", "200", "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert "| encoder=gru | 1 | " in printed and "| n/a (1 run) |" in printed
    assert "1 configuration(s) with 1 run(s): no confidence interval and no seed test; train more seeds (seed=1,2,42 -m): encoder=gru" in caplog.text
    assert "1 configuration(s) with 2 run(s): a 95% t interval on 1 degree of freedom (12.7 x the standard error" in caplog.text and "encoder=lstm" in caplog.text
    assert drawn == [1]  # the bar of the two-run configuration only


def test_a_reader_that_closes_stdout_early_gets_the_files_and_no_traceback(tmp_path):
    base = difficulty()
    for seed in (1, 2, 3):
        write_run(tmp_path / f"a{seed}", ["encoder=gru", f"seed={seed}"], seed_table(base, 0.0, seed))
    out = tmp_path / "cmp"
    command = f"{sys.executable} -m two_tower.cli.compare {tmp_path}/a1 {tmp_path}/a2 {tmp_path}/a3 --out {out} | true; echo status ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and done.stdout.strip() == "status 141", done.stdout + done.stderr[-2000:]
    assert (out / "comparison.md").read_text().startswith("## test/mrr@10") and (out / "comparison.png").stat().st_size > 1000


def test_a_column_of_booleans_is_not_a_metric(tmp_path, capsys):
    """A per-query column of true/false is numeric to pandas: it was compared as an MRR of 0s and 1s (a probe)."""
    base = difficulty()
    table = seed_table(base, 0.0, 1)
    table["mrr@10"] = table["mrr@10"] > 0.5
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], table)
    write_run(tmp_path / "b", ["encoder=lstm", "seed=1"], seed_table(base, 0.0, 1))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "test.parquet: mrr@10 is not a metric column; the metrics are []" in err[0], err


def test_a_folder_named_as_a_baseline_table_is_said_to_be_a_folder(tmp_path, capsys):
    """per_query/x.parquet as a folder was read by pandas as an empty parquet dataset: "no column [...] (has [])"."""
    base = difficulty()
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], seed_table(base, 0.0, 1))
    (tmp_path / "bm25" / "per_query" / "x.parquet").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), "--baseline", str(tmp_path / "bm25")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].endswith("x.parquet: a folder, not a per-query file"), err


def test_a_nan_value_is_refused_in_one_line(tmp_path, capsys):
    base = difficulty()
    table = seed_table(base, 0.0, 1)
    table.loc[3, "mrr@10"] = np.nan
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], table)
    write_run(tmp_path / "b", ["encoder=lstm", "seed=1"], seed_table(base, 0.0, 1))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 300 queries have no mrr@10 value (NaN, e.g. query q3)" in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "test/qid"], "qid is not a metric column; the metrics are ['mrr@10']"),
        (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
        (["--resamples", "0"], "--resamples 0: must be at least 1"),
        (["--out", "{a_file}"], "--out {a_file}: {a_file} is a file, not a folder"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], seed_table(difficulty(), 0.0, 1))
    (tmp_path / "a-file").write_text("")
    args, message = [a.format(a_file=tmp_path / "a-file") for a in args], message.format(a_file=tmp_path / "a-file")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_damaged_run_records_are_one_line(tmp_path, capsys):
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], seed_table(difficulty(), 0.0, 1))
    (tmp_path / "a" / ".hydra" / "overrides.yaml").write_text("- a: [\n")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a")])
    assert "overrides.yaml: not readable YAML" in capsys.readouterr().err
    # an item that is not a string (Hydra writes key=value strings) labelled the configuration "{'seed': 1} [1, 2]" (a probe)
    (tmp_path / "a" / ".hydra" / "overrides.yaml").write_text("- encoder=gru\n- seed: 1\n- [1, 2]\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].endswith("overrides.yaml: item 2 is not an override (key=value) but {'seed': 1}"), err


def test_a_list_seed_one_run_named_twice_and_two_baselines_of_one_name(tmp_path, capsys):
    base = difficulty()
    write_run(tmp_path / "runs" / "a", ["encoder=gru", "seed=[1,2]"], seed_table(base, 0.0, 1))
    for parent in ("x", "y"):
        per_query.write(seed_table(base, -0.1 if parent == "x" else -0.2, 9), tmp_path / parent / "bm25_test" / "per_query" / "bm25.parquet")
    from two_tower.training.compare import find_runs, load_baselines

    assert find_runs([tmp_path / "runs" / "a", tmp_path / "runs" / ".." / "runs" / "a"]) == [tmp_path / "runs" / "a"]
    write_run(tmp_path / "runs" / "b", ["encoder=lstm", "seed=1"], seed_table(base, 0.0, 1))
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert find_runs([a, b, a]) == [a, b]  # where first named: the order decides which system is A
    baselines = load_baselines([tmp_path / "x" / "bm25_test", tmp_path / "y" / "bm25_test"], "test/mrr@10")
    assert len(baselines) == 2 and len({s.run_means("mrr@10")[0] for s in baselines.values()}) == 2
    main([str(tmp_path / "runs"), "--resamples", "100"])  # seed=[1,2] is a seed (as text), not a crash
    assert "| seed=[1,2]" not in capsys.readouterr().out


def test_validation_metrics_leave_out_runs_whose_training_did_not_end(tmp_path, caplog):
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    for seed in (1, 2, 3):
        run = tmp_path / str(seed)
        write_run(run, ["encoder=gru", f"seed={seed}"], seed_table(base, 0.0, seed))
        per_query.write(seed_table(base, 0.0, seed), run / "per_query" / "val_best.parquet")
        if seed == 1:
            (run / "per_query" / per_query.FIT_ENDED).write_text("{}")
        if seed == 3:  # killed after an epoch: its validation table exists, no end record, no test table
            (run / "per_query" / "test.parquet").unlink()
    # seed 2 was made before the end record existed: its test table (scored after training) says it ended
    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "val/mrr@10")
    assert len(systems["encoder=gru"].tables) == 2
    assert any("training did not end" in r.getMessage() and str(tmp_path / "3") in r.getMessage() for r in caplog.records)
    assert len(load_configurations(find_runs([tmp_path]), "test/mrr@10")["encoder=gru"].tables) == 2


def test_many_pairs_with_few_resamples_are_said(caplog):
    base = difficulty()
    systems = {f"c{i}": System(f"c{i}", ["r"], [seed_table(base, 0.01 * i, i)]) for i in range(8)}  # 28 pairs
    with caplog.at_level("WARNING"):
        compare(systems, "test/mrr@10", resamples=200)
    assert any("no randomization p-value can pass Holm's first threshold" in r.getMessage() for r in caplog.records)


def test_config_key_keeps_the_callbacks_that_choose_the_reported_epoch():
    assert config_key(["~callbacks.model_checkpoint", "seed=4"]) == "~callbacks.model_checkpoint"
    assert config_key(["callbacks.model_checkpoint.monitor=val/recall@100"]) != config_key([])
    assert config_key(["callbacks.progress_bar.refresh_rate=1", "callbacks.model_checkpoint.dirpath=/x"]) == "(defaults)"


# ------------------------------------------------------------------------------------------ composed configurations
def write_composed(run, overrides: list[str], config: dict, table: pd.DataFrame) -> None:
    write_run(run, overrides, table)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def composed(seed: int, temperature: float = 0.05, output_dir: str = "/out") -> dict:
    """A composed config as Hydra saves it: interpolations unresolved, run paths and the seed in it."""
    return {"seed": seed, "threads": 1, "loss": {"name": "infonce", "temperature": temperature},
            "data": {"path": None, "pseudo_queries": {"seed": "${seed}"}}, "paths": {"output_dir": output_dir},
            "callbacks": {"model_checkpoint": {"monitor": "val/mrr@10", "dirpath": "${paths.output_dir}/checkpoints"}}}


def test_overrides_that_compose_alike_are_one_configuration(tmp_path, capsys):
    """`loss=infonce` (the default) and no override train alike: one configuration of two seeds, labelled by
    the shorter overrides; `loss.temperature=0.1` is another; a seed of the first twice is still refused."""
    base = difficulty()
    write_composed(tmp_path / "a", ["loss=infonce", "seed=1"], composed(1, output_dir="/a"), seed_table(base, 0.0, 1))
    write_composed(tmp_path / "b", ["seed=2", "threads=2"], composed(2, output_dir="/b"), seed_table(base, 0.0, 2))
    write_composed(tmp_path / "c", ["loss.temperature=0.1", "seed=1"], composed(1, 0.1), seed_table(base, 0.0, 3))
    out = tmp_path / "cmp"
    main([str(tmp_path / d) for d in "abc"] + ["--metric", "test/mrr@10", "--out", str(out), "--resamples", "200"])
    summary = pd.read_csv(out / "configurations.csv").set_index("system")
    assert summary["runs"].to_dict() == {"(defaults)": 2, "loss.temperature=0.1": 1}
    capsys.readouterr()
    write_composed(tmp_path / "d", ["+loss.name=infonce", "seed=2"], composed(2), seed_table(base, 0.0, 4))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / d) for d in "abcd"] + ["--resamples", "200"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "b") in err[0] and str(tmp_path / "d") in err[0] and "seed=2" in err[0]


def test_the_same_overrides_composed_differently_are_two_configurations_and_said(tmp_path, caplog):
    """Runs of `encoder=gru` made when a default differed (other code) are not pooled: two configurations,
    told apart by the first setting in which they differ, and a warning says so."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    for seed, temperature in ((1, 0.05), (2, 0.05), (3, 0.1)):
        write_composed(tmp_path / str(seed), ["encoder=gru", f"seed={seed}"], composed(seed, temperature), seed_table(base, 0.0, seed))
    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {"encoder=gru [loss.temperature=0.05]": 2, "encoder=gru [loss.temperature=0.1]": 1}
    assert any("differ in their composed configuration" in r.getMessage() and "encoder=gru" in r.getMessage() for r in caplog.records)


def test_runs_on_other_rows_under_one_data_path_are_two_configurations(tmp_path, caplog):
    """One data.path whose shards were replaced between seeds (4,680 training rows, then 2,000): compare averaged the
    two as one configuration, silently (a probe). fit_ended.json records the rows' digests; runs on other rows are
    other configurations, named by them, and said."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    for seed, train_digest in ((1, "a" * 64), (2, "a" * 64), (3, "b" * 64)):
        write_composed(tmp_path / str(seed), ["encoder=gru", f"seed={seed}"], composed(seed), seed_table(base, 0.0, seed))
        (tmp_path / str(seed) / "per_query" / "fit_ended.json").write_text(
            json.dumps({"epoch": 0, "global_step": 9, "data": {"train": train_digest, "validation": "c" * 64}}))
    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {
        f"encoder=gru [data rows=train:{'a' * 12},validation:{'c' * 12}]": 2, f"encoder=gru [data rows=train:{'b' * 12},validation:{'c' * 12}]": 1}
    assert any("differ in their composed configuration" in r.getMessage() and "data rows" in r.getMessage() for r in caplog.records)
    # a run made before fit_ended.json recorded its rows joins the one set of rows the others name (a sweep extended
    # with new seeds stays one configuration: a review), and is a configuration of its own where they name several
    (tmp_path / "4").mkdir()
    write_composed(tmp_path / "4", ["encoder=gru", "seed=4"], composed(4), seed_table(base, 0.0, 4))
    (tmp_path / "4" / "per_query" / "fit_ended.json").write_text(json.dumps({"epoch": 0, "global_step": 9}))
    systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert sorted(len(s.runs) for s in systems.values()) == [1, 1, 2] and "encoder=gru [data rows=(not recorded)]" in systems
    shutil.rmtree(tmp_path / "3")
    systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {"encoder=gru": 3}


def test_runs_composed_before_a_setting_was_added_pool_with_runs_after(tmp_path, caplog):
    """trainer.num_nodes and encoder.packing came into the packaged configs with the values runs already had:
    seeds composed before (without the keys) and after (with them) are one configuration (a review found them
    split in two, and tested against each other)."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    old = {"trainer": {"max_epochs": 1}, "encoder": {"cell": "gru"}}
    new = {"trainer": {"max_epochs": 1, "num_nodes": 1}, "encoder": {"cell": "gru", "packing": "auto"}}
    for seed, parts in ((1, old), (2, old), (3, new)):
        write_composed(tmp_path / str(seed), ["encoder=gru", f"seed={seed}"], {**composed(seed), **parts}, seed_table(base, 0.0, seed))
    packed = {"trainer": {"max_epochs": 1, "num_nodes": 1}, "encoder": {"cell": "gru", "packing": "packed"}}
    write_composed(tmp_path / "4", ["encoder=gru", "encoder.packing=packed", "seed=4"], {**composed(4), **packed}, seed_table(base, 0.0, 4))
    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {"encoder=gru": 3, "encoder.packing=packed encoder=gru": 1}
    assert not any("differ in their composed configuration" in r.getMessage() for r in caplog.records)


def test_three_configurations_under_one_override_text_all_stay(tmp_path, caplog):
    """A review's case: runs of experiment=best made by three versions of the code (hidden size 64 with and
    without one setting, and 128); labelling each by the first differing setting named two of them alike and
    one was dropped with its runs. Each keeps its own label and its runs."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    recipes = {"a": (64, 1.0), "b": (64, 0.0), "c": (128, 0.0)}
    for name, (hidden, relation) in recipes.items():
        for seed in (1, 2):
            config = {**composed(seed), "encoder": {"hidden_size": hidden}, "loss": {"name": "infonce", "temperature": 0.05, "query_relation_weight": relation}}
            write_composed(tmp_path / f"{name}{seed}", ["experiment=best", f"seed={seed}"], config, seed_table(base, 0.0, seed))
    with caplog.at_level("WARNING"):
        systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert sorted(len(s.runs) for s in systems.values()) == [2, 2, 2]
    assert set(systems) == {"experiment=best [encoder.hidden_size=64, loss.query_relation_weight=1.0]",
                            "experiment=best [encoder.hidden_size=64, loss.query_relation_weight=0.0]",
                            "experiment=best [encoder.hidden_size=128, loss.query_relation_weight=0.0]"}


def test_callbacks_that_change_training_keep_configurations_apart_and_links_are_followed(tmp_path):
    """Early stopping (or which epochs a checkpoint keeps) changes what is trained or reported: not pooled
    with the plain runs (all callbacks were left out of the key: a probe). A run folder reached through a
    link inside a folder given is found (rglob did not follow links: its runs were left out without a word)."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    for seed in (1, 2):
        write_composed(tmp_path / "runs" / f"plain{seed}", [f"seed={seed}"], composed(seed), seed_table(base, 0.0, seed))
    stopping = {**composed(3), "callbacks": {**composed(3)["callbacks"], "early_stopping": {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/mrr@10", "patience": 0}}}
    write_composed(tmp_path / "runs" / "stopped3", ["seed=3", "+callbacks.early_stopping.patience=0"], stopping, seed_table(base, 0.0, 3))
    quiet = {**composed(4), "callbacks": {**composed(4)["callbacks"], "progress_bar": {"refresh_rate": 1}}}
    write_composed(tmp_path / "elsewhere" / "quiet4", ["seed=4", "callbacks.progress_bar.refresh_rate=1"], quiet, seed_table(base, 0.0, 4))
    (tmp_path / "runs" / "linked").symlink_to(tmp_path / "elsewhere" / "quiet4")
    systems = load_configurations(find_runs([tmp_path / "runs"]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {"(defaults)": 3, "+callbacks.early_stopping.patience=0": 1}


def test_a_run_without_its_composed_config_is_told_apart_from_one_with_it(tmp_path):
    """Same overrides, one run folder without .hydra/config.yaml: two configurations, the one with a config
    keeps the plain label (it read "[#1]")."""
    from two_tower.training.compare import find_runs, load_configurations

    base = difficulty()
    write_composed(tmp_path / "with", ["encoder=gru", "seed=1"], composed(1), seed_table(base, 0.0, 1))
    write_run(tmp_path / "without", ["encoder=gru", "seed=2"], seed_table(base, 0.0, 2))
    systems = load_configurations(find_runs([tmp_path]), "test/mrr@10")
    assert {name: len(s.runs) for name, s in systems.items()} == {"encoder=gru": 1, "encoder=gru [no .hydra/config.yaml]": 1}


def test_a_training_run_given_as_a_baseline_is_named_as_such(tmp_path):
    """It said the run's per_query files and its queries differed, which led nowhere."""
    from two_tower.core.errors import TwoTowerError
    from two_tower.training.compare import find_runs, load_baselines, load_configurations

    run = tmp_path / "run"
    write_composed(run, ["seed=1"], composed(1), seed_table(difficulty(), 0.0, 1))
    (run / "checkpoints").mkdir()
    with pytest.raises(TwoTowerError, match=r"--baseline .*run: a training run; --baseline takes an evaluate.py output dir"):
        load_baselines([run], "test/mrr@10")


def test_help_gives_the_defaults(capsys):
    """A probe: --help named --metric, --alpha and --resamples without their defaults (test/mrr@10, 0.05, 10,000)."""
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--metric", "test/mrr@10"), ("--alpha", "0.05"), ("--resamples", "10000"), ("--out", "none")):
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}", text), (option, text)


# ------------------------------------------------------------------------------------------ probe: non-finite, tiny tables, seed spellings


@pytest.mark.parametrize("bad", [np.inf, -np.inf, 56.7, -0.5])
def test_an_infinite_value_is_refused_in_one_line(tmp_path, capsys, bad):
    """NaN was refused, inf was not: the mean was inf, the t-test's p NaN, the randomization p at its floor
    (0.0009995 with 2,000 resamples), and a 2-run configuration's row said 'n/a (1 run)'; exit 0."""
    base = difficulty()
    table = seed_table(base, 0.0, 1)
    table.loc[2, "mrr@10"] = bad
    write_run(tmp_path / "a1", ["encoder=gru", "seed=1"], table)
    write_run(tmp_path / "a2", ["encoder=gru", "seed=2"], seed_table(base, 0.0, 2))
    write_run(tmp_path / "b1", ["encoder=lstm", "seed=1"], seed_table(base, 0.0, 3))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--resamples", "200"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    what = "an infinite mrr@10 value" if np.isinf(bad) else "a mrr@10 value outside [0, 1]"  # a proportion (a probe compared 56.7)
    assert err[0].startswith(f"error: {tmp_path / 'a1'}: 1 of 300 queries have {what}") and "query q2" in err[0], err


@pytest.mark.parametrize("rows", [0, 1])
def test_tables_of_fewer_than_two_queries_are_refused_in_one_line(tmp_path, capsys, rows):
    """0 rows: every figure NaN, 'Tests over 0 queries', exit 0; 1 row: scipy's ValueError traceback, exit 1."""
    for name, shift in (("gru", 0.0), ("lstm", 0.1)):
        for seed in (1, 2):
            table = seed_table(difficulty(), shift, seed).iloc[:rows]
            write_run(tmp_path / f"{name}{seed}", [f"encoder={name}", f"seed={seed}"], table)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--resamples", "200"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "a paired comparison needs at least 2" in err[0], err


def test_one_seed_spelled_two_ways_is_one_seed(tmp_path, capsys):
    """seed=1, seed=01 and seed=1.0 all seed the run with 1 (int(seed)); compared as text they were three seeds, and
    three copies of one run made an interval [m, m]."""
    table = seed_table(difficulty(), 0.0, 1)
    for name, seed in (("a", "1"), ("b", "01"), ("c", "1.0")):
        write_run(tmp_path / name, ["encoder=gru", f"seed={seed}"], table)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "200"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "both seed=1 of one configuration" in err[0], err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a"), str(tmp_path / "c"), "--resamples", "200"])
    assert "both seed=1 of one configuration" in capsys.readouterr().err


@pytest.mark.parametrize("taken", ["comparison.md", "comparison.png"])
def test_an_output_name_taken_by_a_folder_is_one_line_before_any_file(tmp_path, capsys, taken):
    """os.replace onto a folder was a traceback (exit 1), and with comparison.png after three new files were written."""
    for seed in (1, 2):
        write_run(tmp_path / "runs" / str(seed), ["encoder=gru", f"seed={seed}"], seed_table(difficulty(), 0.0, seed))
    out = tmp_path / "cmp"
    (out / taken).mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "runs"), "--out", str(out), "--resamples", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"{taken} there is a folder" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == [taken]


def test_two_runs_with_the_same_values_on_every_query_are_said(tmp_path, caplog):
    """A run folder copied and its seed= edited is two seeds to the seed check; its per-query values give it away."""
    table = seed_table(difficulty(), 0.0, 1)
    write_run(tmp_path / "a", ["encoder=gru", "seed=1"], table)
    write_run(tmp_path / "b", ["encoder=gru", "seed=2"], table.sample(frac=1, random_state=0))  # same values, rows reordered
    write_run(tmp_path / "c", ["encoder=gru", "seed=3"], seed_table(difficulty(), 0.0, 3))
    with caplog.at_level("WARNING"):
        main([str(tmp_path), "--resamples", "100"])
    said = [r.getMessage() for r in caplog.records if "on every query" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "a") in said[0] and str(tmp_path / "b") in said[0]


def test_the_difference_has_a_confidence_interval_over_queries_that_matches_the_paired_t_test():
    """A - B was one number (a probe: issue #15 asked for error bars): now with the paired t-test's 95% interval over
    queries, on seed-averaged per-query values; it leaves out 0 exactly where that test's p is below 0.05."""
    from scipy import stats

    base = difficulty()
    for shift in (0.0, 0.01, 0.03, 0.1):
        a = [seed_table(base, shift, s) for s in range(3)]
        b = [seed_table(base, 0.0, s) for s in range(3, 5)]
        summary, tests = compare({"A": System("A", ["a"] * 3, a), "B": System("B", ["b"] * 2, b)}, "test/mrr@10", resamples=200)
        x = pd.concat([t["mrr@10"] for t in a], axis=1).mean(axis=1).to_numpy()
        y = pd.concat([t["mrr@10"] for t in b], axis=1).mean(axis=1).to_numpy()
        d = x - y
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        row = tests.iloc[0]
        assert row["A - B"] == pytest.approx(d.mean()) and (row["A - B ci_low"], row["A - B ci_high"]) == pytest.approx((low, high))
        assert (low > 0 or high < 0) == (row["p (t-test)"] < 0.05)
        from two_tower.training.compare import markdown

        assert f"[{low:+.4f}, {high:+.4f}]" in markdown(summary, tests, "test/mrr@10")


def test_seeds_are_compared_exactly_however_large():
    """Seeds went through float: past 2**53 two seeds became one (a review)."""
    from two_tower.training.compare import seed_text

    assert seed_text("9007199254740993") != seed_text("9007199254740992")
    assert seed_text("01") == seed_text("+1") == seed_text("1.0") == seed_text("'1'") == "1"


def test_a_killed_compares_half_written_output_is_swept_by_the_next(tmp_path, capsys):
    """Each output is written beside its name and renamed; a compare killed mid-write left its temporary file in --out
    for good (a probe). The next compare into that folder removes those of writers no longer running."""
    import os

    from two_tower.core.atomic import temp_path

    for seed in (1, 2):
        write_run(tmp_path / "runs" / str(seed), ["encoder=gru", f"seed={seed}"], seed_table(difficulty(), 0.0, seed))
    out = tmp_path / "cmp"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = temp_path(out / "comparison.md")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{dead}-"))  # a writer that is gone
    stale.write_text("half")
    main([str(tmp_path / "runs"), "--out", str(out), "--resamples", "100"])
    assert sorted(p.name for p in out.iterdir()) == ["comparison.md", "comparison.png", "configurations.csv", "tests.csv"]


def test_review_of_compare_baselines_named_like_configurations_runs_without_checkpoints_and_few_queries(tmp_path, caplog):
    """A probe of compare's statistics: a baseline table named like a configuration ('(defaults).parquet') replaced the
    configuration in the comparison; a training run whose checkpoints/ had been deleted was taken as a baseline (its
    stage tables, one a seed of a compared configuration); with 5 queries the exact sign-flip test cannot go below
    2/2^5 = 0.0625, so nothing could be flagged, without a word; one system wrote tests.csv without the Holm columns."""
    from two_tower.core.errors import TwoTowerError
    from two_tower.training.compare import find_runs, load_baselines, load_configurations

    base = difficulty()
    sweep = tmp_path / "sweep"
    for seed in (1, 2, 3):
        write_run(sweep / str(seed), [f"seed={seed}"], seed_table(base, 0.1, seed))
    baseline = tmp_path / "eval"
    per_query.write(seed_table(base, -0.1, 99), baseline / "per_query" / "(defaults).parquet")
    systems = load_configurations(find_runs([sweep]), "test/mrr@10")
    systems.update(load_baselines([baseline], "test/mrr@10", taken=set(systems)))
    assert sorted(systems) == ["(defaults)", "(defaults) (eval)"] and len(systems["(defaults)"].tables) == 3
    run = tmp_path / "run"  # a training run without checkpoints/: its stage tables say what it is
    write_run(run, ["seed=1"], seed_table(base, 0.0, 1))
    per_query.write(seed_table(base, 0.0, 1), run / "per_query" / "val_best.parquet")
    with pytest.raises(TwoTowerError, match=r"a training run; --baseline takes an evaluate.py output dir"):
        load_baselines([run], "test/mrr@10")
    few = {name: System(name, ["r"], [per_query.frame([f"q{i}" for i in range(5)], [f"query {i}" for i in range(5)],
                                                       {"mrr@10": np.full(5, value)})]) for name, value in (("a", 0.9), ("b", 0.4))}
    with caplog.at_level("WARNING"):
        _, tests = compare(few, "test/mrr@10", resamples=10_000)
    assert any("the smallest p with 5 queries (every sign flip counted) is 0.062" in r.getMessage() for r in caplog.records)
    _, alone = compare({"a": few["a"]}, "test/mrr@10")
    assert list(alone.columns) == list(tests.columns) and alone.empty


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".tsv"])
def test_a_per_query_file_reads_back_its_ids_and_queries_as_written(tmp_path, suffix):
    """A .tsv read "NaN", "null", "NA", "None" and "" as missing: qids "NaN" and "null" both came back "nan" (refused as
    one id twice), and a query "None" as nan; a .jsonl read a query "123" as the number 123 (refused by check_same_queries
    against the same query of a parquet table). A probe."""
    qids, queries = ["001", "NaN", "null", "", "NA", "7"], ["a", "None", "NA", "null", "", "123"]
    table = per_query.frame(qids, queries, {"mrr@10": [1.0, 0.0, 0.5, 0.25, 0.2, 0.1]})
    back = per_query.read(per_query.write(table, tmp_path / f"t{suffix}"), "mrr@10")
    assert back["qid"].tolist() == qids and back["query"].tolist() == queries and back["mrr@10"].tolist() == [1.0, 0.0, 0.5, 0.25, 0.2, 0.1]
    numbers = per_query.frame(["1", "2"], ["123", "2020"], {"mrr@10": [1.0, 0.5]})  # every query a number
    assert per_query.read(per_query.write(numbers, tmp_path / f"n{suffix}"))["query"].tolist() == ["123", "2020"]
