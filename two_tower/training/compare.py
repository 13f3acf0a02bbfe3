"""Compare configurations honestly: seeds grouped, intervals over seeds, paired tests over queries.

    python -m two_tower.cli.compare RUN_OR_SWEEP_DIRS... [--metric test/mrr@10] [--baseline EVALUATE_OUT_DIR ...]
                                [--out DIR] [--alpha 0.05] [--wandb-project PROJECT]

- Runs are the dirs holding ``.hydra/overrides.yaml`` under the given dirs (a run dir or a sweep dir);
  they are grouped by configuration: the composed ``.hydra/config.yaml`` less the seed and the settings that
  do not change what is trained or reported (``two_tower.core.config_key``; runs on another ``data.path``
  are another configuration), labelled by their overrides. Two runs of one configuration with the same
  seed are refused in one line naming both folders: one training would count as two seeds.
- Per configuration: the metric of each run (its per-query mean, = the logged value), their mean and a
  95% Student-t confidence interval over seeds.
- Tests, one per pair of systems (configurations and baselines), on two axes. Over queries: each
  configuration's per-query metric is first averaged over its seeds; the two systems' per-query values
  are compared with a paired t-test (``scipy.stats.ttest_rel``) and a paired randomization test (Fisher's:
  random sign flips of the per-query differences, ``scipy.stats.permutation_test``). Over seeds: the runs'
  means, by Welch's t-test (against a baseline, one ranking, a one-sample t-test); not testable with one
  run. The p-values are Holm-corrected over all the pairs of the table; a pair is flagged when both the
  corrected randomization p-value and the corrected seed p-value are below ``--alpha`` (an
  intersection-union test: the difference holds for other queries and for other seeds; at most alpha a
  pair, at most 2 x alpha over the table).
- Baselines: ``evaluate.py`` output dirs (``per_query/<retriever>.parquet``), e.g. BM25 on the same split.
- ``--metric stage/name``: ``test/*`` reads ``per_query/test.parquet``; ``val/*`` the best validation
  epoch (``per_query/val_best.parquet``); ``val_last/*`` the last.

Writes ``comparison.md`` (both tables), ``configurations.csv``, ``tests.csv`` and ``comparison.png`` (mean
and 95% CI per configuration, baselines as points) to ``--out`` and prints the markdown.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
import pandas as pd
from scipy import stats

from two_tower.core import per_query
from two_tower.core.atomic import atomic_write
from two_tower.core.config_key import composed_key, composed_settings, config_key, run_config, run_cwd, run_overrides
from two_tower.core.errors import CompareError

log = logging.getLogger(__name__)

STAGE_FILES = per_query.STAGE_FILES


@dataclass
class System:
    """A configuration (several seeds) or a baseline (one ranking): each run's per-query values."""

    name: str
    runs: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    baseline: bool = False

    def run_means(self, metric: str) -> np.ndarray:
        return np.array([t[metric].mean() for t in self.tables])

    def per_query(self, metric: str) -> pd.Series:
        """Each query's metric averaged over the runs (seeds), indexed by qid."""
        return pd.concat([t.set_index("qid")[metric] for t in self.tables], axis=1).mean(axis=1)


# ------------------------------------------------------------------------------------------ statistics
def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (a configuration's run means, over seeds; a pair's
    per-query differences, over queries); (mean, nan, nan) for a single value, (mean, mean, mean) for values that
    agree exactly (scipy's interval is nan at zero spread)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(values) == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; statsmodels' ``multipletests(method="holm")``,
    written here because statsmodels is not a dependency): sort ascending, multiply the i-th smallest by
    (m - i), make them non-decreasing, cap at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def paired_tests(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Two-sided p-values of a paired t-test and of Fisher's paired randomization test on a - b."""
    if np.allclose(a, b):
        return 1.0, 1.0
    t_p = float(stats.ttest_rel(a, b).pvalue)
    rand = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=resamples, alternative="two-sided", random_state=seed,
        batch=max(1, 4_000_000 // max(1, len(a))),  # resamples per step: memory stays ~100 MB whatever the query count
    )
    return t_p, float(rand.pvalue)


def seed_test(a: np.ndarray, b: np.ndarray, a_fixed: bool = False, b_fixed: bool = False) -> float:
    """Two-sided p-value that two systems' run means (one per seed) differ by more than the seed moves them:
    Welch's t-test; against a baseline (``*_fixed``: one ranking, no seed) a one-sample t-test of the other's
    runs. NaN when a configuration has one run: its seed-to-seed spread is unknown."""
    if a_fixed and b_fixed:
        return float("nan")
    if a_fixed or b_fixed:
        runs, value = (b, a[0]) if a_fixed else (a, b[0])
        if len(runs) < 2:
            return float("nan")
        if np.ptp(runs) == 0:  # no spread at all: the runs are the baseline's value or they are not
            return 1.0 if runs[0] == value else 0.0
        return float(stats.ttest_1samp(runs, value).pvalue)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# ------------------------------------------------------------------------------------------ loading
def find_runs(paths: list[Path]) -> list[Path]:
    """Run dirs (with ``.hydra/overrides.yaml``) at or under ``paths``."""
    runs = []
    for path in paths:
        if not path.exists():
            raise CompareError(f"{path} does not exist")
        found = [path] if (path / ".hydra" / "overrides.yaml").is_file() else run_folders_under(path)
        if not found:
            raise CompareError(f"{path}: no run dir (with .hydra/overrides.yaml) in it")
        runs.extend(found)
    return distinct(runs)


def run_folders_under(path: Path) -> list[Path]:
    """The run folders (holding ``.hydra/overrides.yaml``) at any depth under ``path``, through links to
    folders too (``Path.rglob`` does not follow them, so linked runs were left out without a word); a link
    back to a folder already walked is not walked again."""
    found, seen = [], set()
    for root, dirs, _ in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if os.path.isfile(os.path.join(root, ".hydra", "overrides.yaml")):
            found.append(Path(root))
        dirs[:] = [d for d in dirs if d != ".hydra"]
    return sorted(found)


def distinct(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats: one file or folder named twice (``../``, a link) is one, where first named."""
    first = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def split_metric(metric: str) -> tuple[str, str]:
    stage, _, name = metric.partition("/")
    if stage not in STAGE_FILES or not name:
        raise CompareError(f"--metric {metric}: expected {'|'.join(STAGE_FILES)}/<metric>, e.g. test/mrr@10")
    return STAGE_FILES[stage], name


def run_seed(run: Path) -> str | None:
    """The run's seed (as text): its ``seed=`` override, else the ``seed`` of its ``.hydra/config.yaml``; None
    if neither says."""
    for override in run_overrides(run):
        name, _, value = override.lstrip("+").partition("=")
        if name == "seed":
            return seed_text(value.strip())
    seed = (run_config(run) or {}).get("seed")
    return None if seed is None else seed_text(str(seed))


def seed_text(value: str) -> str:
    """One spelling per seed: ``seed=01``, ``seed=+1``, ``seed=1.0`` and ``seed='1'`` all seed the run with 1
    (Lightning's ``seed_everything`` takes ``int(seed)``), so they are one seed, "1"; other text is kept as is."""
    text = value.strip().strip("'\"").strip()
    try:
        return str(int(text))  # exact, however large (through float, seeds past 2**53 would merge)
    except ValueError:
        pass
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def configuration(run: Path) -> tuple[str, str, dict | None]:
    """What groups a run with its other seeds, its label (the override key), and its composed settings (None
    for a run folder without ``.hydra/config.yaml``, which is then grouped by its overrides alone)."""
    cwd = run_cwd(run)
    label = config_key(run_overrides(run), cwd)
    config = run_config(run)
    if config is None:
        return f"overrides: {label}", label, None
    settings = composed_settings(config, cwd)
    return composed_key(settings), label, settings


def data_rows(run: Path) -> str | None:
    """The rows the run trained and validated on, as its ``fit_ended.json`` records them (their content digests: runs
    made before that record, or whose training did not end, have none): one short text, or None."""
    try:
        data = json.loads((run / "per_query" / per_query.FIT_ENDED).read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(data, dict) or not data:
        return None
    return ",".join(f"{split}:{str(digest)[:12]}" for split, digest in sorted(data.items()))


def label_configurations(groups: dict[str, list], settings: dict[str, dict | None]) -> dict[str, str]:
    """A label a configuration: the shortest override key of its runs (``(defaults)`` before ``loss=infonce``
    when both composed alike). Configurations whose overrides read alike (run by other code, whose defaults
    differ) are told apart by the fewest settings in which they differ (every configuration keeps its own
    label: none is dropped), and said."""
    labels = {group: min(keys, key=lambda k: (len(k), k)) for group, keys in groups.items()}
    by_label: dict[str, list[str]] = {}
    for group, label in labels.items():
        by_label.setdefault(label, []).append(group)
    for label, clashing in by_label.items():
        if len(clashing) < 2:
            continue
        known = {g: settings[g] for g in clashing if settings[g] is not None}
        names = sorted({n for a in known.values() for b in known.values() for n in set(a) | set(b) if a.get(n, "<unset>") != b.get(n, "<unset>")})
        def told_apart(keys: list[str]) -> int:  # how many configurations these settings' values tell apart
            return len({tuple(str(known[g].get(k, "<unset>")) for k in keys) for g in known})

        shown: list[str] = []
        for name in names:  # add a differing setting while it tells more configurations apart
            if told_apart(shown + [name]) > told_apart(shown):
                shown.append(name)
            if told_apart(shown) == len(known):
                break
        for group in clashing:
            if group not in known:
                labels[group] = f"{label} [no .hydra/config.yaml]"
            else:
                values = ", ".join(f"{k}={known[group].get(k, '<unset>')}" for k in shown)
                labels[group] = f"{label} [{values}]" if shown else label  # the one with a config.yaml keeps the plain label
        log.warning("runs with the overrides %r differ in their composed configuration (.hydra/config.yaml, which some may "
                    "lack; made by other code, or other defaults) or in the rows they trained on (data rows): compared as %d "
                    "configurations: %s", label, len(clashing),
                    "; ".join(labels[g] for g in clashing))
    if len(set(labels.values())) != len(labels):  # never two configurations under one name (one would be dropped)
        seen: dict[str, int] = {}
        for group in labels:
            seen[labels[group]] = seen.get(labels[group], 0) + 1
            if seen[labels[group]] > 1:
                labels[group] = f"{labels[group]} #{seen[labels[group]]}"
    return labels


def training_ended(run: Path) -> bool:
    """Whether the run's training ended: its ``fit_ended.json``, or for runs made before that record, a test
    table (the test split is scored after training)."""
    return (run / "per_query" / per_query.FIT_ENDED).is_file() or (run / "per_query" / STAGE_FILES["test"]).is_file()


def load_configurations(runs: list[Path], metric: str) -> dict[str, System]:
    filename, name = split_metric(metric)
    groups: dict[str, System] = {}  # configuration -> its runs
    labels: dict[str, list[str]] = {}  # configuration -> its runs' override keys
    composed: dict[str, dict | None] = {}
    seeds: dict[tuple[str, object], Path] = {}  # (configuration, seed) -> the run counted for it
    skipped, reasons = [], []
    found = []  # (run, its table, configuration, label, settings, data rows)
    for run in runs:
        path = run / "per_query" / filename
        if not path.is_file():  # unfinished or failed, or no such split: said, and left out (see the runs column)
            skipped.append(run)
            reasons.append(f"no per_query/{filename} (unfinished, or no {metric.split('/')[0]} split scored)")
            log.warning("skipped %s: %s", run, reasons[-1])
            continue
        if filename != STAGE_FILES["test"] and not training_ended(run):
            # validation tables are written every epoch: a killed or running run has them too
            skipped.append(run)
            reasons.append(f"training did not end (no per_query/{per_query.FIT_ENDED}: killed, still running, or made before that record without a test split)")
            log.warning("skipped %s: %s", run, reasons[-1])
            continue
        found.append((run, path, *configuration(run), data_rows(run)))
    # Runs of one configuration on other rows under one data.path (its files replaced between seeds: a probe averaged
    # 4,680 and 2,000 training rows as one) are other configurations, named by their rows. Runs that recorded no rows
    # (made before fit_ended.json held them) join the one set of rows the others name; where those name several,
    # they are a configuration of their own, "(not recorded)".
    recorded: dict[str, set[str]] = {}
    for _, _, group, _, _, rows in found:
        if rows:
            recorded.setdefault(group, set()).add(rows)
    for run, path, group, label, settings, rows in found:
        if len(recorded.get(group, ())) > 1:
            rows = rows or "(not recorded)"
            group = f"{group} data rows: {rows}"
            settings = None if settings is None else {**settings, "data rows": rows}
        seed = run_seed(run)
        if seed is not None:
            if (group, seed) in seeds:
                raise CompareError(f"{seeds[group, seed]} and {run}: both seed={seed} of one configuration ({label}); "
                                   "one training would count as two seeds: leave one of them out")
            seeds[group, seed] = run
        system = groups.setdefault(group, System(label))
        system.runs.append(str(run))
        system.tables.append(per_query.read(path, name))
        labels.setdefault(group, []).append(label)
        composed[group] = settings
    names = label_configurations(labels, composed)
    for group, system in groups.items():
        system.name = names[group]
    systems = {system.name: system for system in groups.values()}
    if not systems:
        raise CompareError(f"no run to compare on {metric}: {len(skipped)} run dir(s) found, all skipped, e.g. {skipped[0]}: {reasons[0]}")
    return systems


def _training_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run: checkpoints/, a training stage's per-query table, or a ``.hydra/config.yaml``
    with a trainer (an evaluate.py run folder's has retrievers). It was told by checkpoints/ alone, which people delete: a run without one became baselines named
    after its stages (``test``, ``val_best``), one of them a seed of a configuration compared with itself (a probe)."""
    if (folder / "checkpoints").is_dir() or any((folder / "per_query" / name).exists() for name in ("val_best.parquet", "val_last.parquet", "fit_ended.json")):
        return True
    config = folder / ".hydra" / "config.yaml"
    try:
        loaded = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(loaded, dict) and "trainer" in loaded


def load_baselines(dirs: list[Path], metric: str, taken: set[str] = frozenset()) -> dict[str, System]:
    """Each evaluate.py output dir's per-query tables as baselines. ``taken``: names of the configurations compared
    beside them; a baseline of the same name (a table named ``(defaults).parquet``) is told apart by its folder, as it
    replaced the configuration in the comparison (a probe)."""
    _, name = split_metric(metric)
    systems = {}
    dirs = distinct(dirs)
    for folder in dirs:
        files = sorted((folder / "per_query").glob("*.parquet"))
        if _training_run(folder):
            raise CompareError(f"--baseline {folder}: a training run; --baseline takes an evaluate.py output dir "
                               "(give training runs as the positional arguments)")
        if not files:
            raise CompareError(f"--baseline {folder}: no per_query/*.parquet (an evaluate.py output dir is expected)")
        for path in files:
            label = f"{path.stem} ({folder.name})" if len(dirs) > 1 or path.stem in taken else path.stem
            if label in systems or label in taken:  # two folders of one name: the whole path tells them apart
                label = f"{path.stem} ({folder})"
            systems[label] = System(label, [str(path)], [per_query.read(path, name)], baseline=True)
    return systems


def check_values(systems: dict[str, System], name: str) -> None:
    """Every query has a finite value: a NaN would drop out of one run's mean and make the randomization test
    count no resample as extreme (p at its floor, identical systems flagged); an infinite one did the same
    (the mean inf, the t-test's p NaN, the randomization p at its floor, a 2-run interval shown as '1 run')."""
    for system in systems.values():
        for run, table in zip(system.runs, system.tables):
            missing = table[name].isna()
            if missing.any():
                raise CompareError(f"{run}: {int(missing.sum())} of {len(table)} queries have no {name} value (NaN, e.g. query "
                                   f"{table['qid'][missing].iloc[0]}): a comparison needs every query's value")
            infinite = ~np.isfinite(table[name].to_numpy(dtype=float))
            if infinite.any():
                first = int(np.flatnonzero(infinite)[0])
                raise CompareError(f"{run}: {int(infinite.sum())} of {len(table)} queries have an infinite {name} value ("
                                   f"{table[name].iloc[first]} for query {table['qid'].iloc[first]}): a comparison needs finite values")
            # every per-query metric (MRR, nDCG, recall) is a proportion: another value is an edited or foreign table (a probe
            # compared an MRR of 56.7 without a word)
            outside = ((table[name] < 0) | (table[name] > 1)).to_numpy()
            if outside.any():
                first = int(np.flatnonzero(outside)[0])
                raise CompareError(f"{run}: {int(outside.sum())} of {len(table)} queries have a {name} value outside [0, 1] ("
                                   f"{table[name].iloc[first]} for query {table['qid'].iloc[first]}): not a table this project wrote")


def check_same_queries(systems: dict[str, System]) -> None:
    """Every run scored the same queries (same ids and texts): otherwise no pairing is possible."""
    reference, where = None, None
    for system in systems.values():
        for run, table in zip(system.runs, system.tables):
            if len(table) < 2:  # no mean (0 rows: every figure NaN, exit 0) or no paired test (1 row: scipy's traceback)
                raise CompareError(f"{run}: {len(table)} quer{'y' if len(table) == 1 else 'ies'} scored: a paired comparison needs at least 2")
            if table["qid"].duplicated().any():
                raise CompareError(f"{run}: query id {table['qid'][table['qid'].duplicated()].iloc[0]} appears twice")
            queries = dict(zip(table["qid"], table["query"]))
            if reference is None:
                reference, where = queries, run
                continue
            if queries.keys() != reference.keys():
                raise CompareError(f"{run} and {where} scored different queries ({len(queries)} vs {len(reference)}; "
                                   f"{len(queries.keys() ^ reference.keys())} ids differ): compare runs on the same split")
            differs = [q for q in queries if queries[q] != reference[q]]
            if differs:  # ids are row numbers in a split: a validation baseline and runs' test/* share them
                raise CompareError(f"{run} and {where}: query {differs[0]} is {queries[differs[0]]!r} in one and {reference[differs[0]]!r} in the "
                                   f"other ({len(differs)} of {len(queries)} queries differ): compare runs on the same split")


# ------------------------------------------------------------------------------------------ tables
def compare(systems: dict[str, System], metric: str, alpha: float = 0.05, resamples: int = 10_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per system: runs, mean, 95% CI; one row per pair: means, difference, p-values, Holm)."""
    _, name = split_metric(metric)
    if not 0 < alpha < 1:
        raise CompareError(f"--alpha {alpha}: must be between 0 and 1")
    if resamples < 1:
        raise CompareError(f"--resamples {resamples}: must be at least 1")
    check_same_queries(systems)
    check_values(systems, name)
    rows = []
    for system in systems.values():
        values = system.run_means(name)
        mean, low, high = mean_ci(values)
        rows.append({"system": system.name, "kind": "baseline" if system.baseline else "configuration", "runs": len(values),
                     metric: mean, "ci_low": low, "ci_high": high, "per_run": " ".join(f"{v:.4f}" for v in values)})
    summary = pd.DataFrame(rows)
    for runs, what in ((1, "no confidence interval and no seed test"),
                       (2, f"a 95% t interval on 1 degree of freedom ({stats.t.ppf(0.975, 1):.1f} x the standard error, where 3 runs give {stats.t.ppf(0.975, 2):.1f} x), so a wide one")):
        few = [r["system"] for r in rows if r["kind"] == "configuration" and r["runs"] == runs]
        if few:
            log.warning("%d configuration(s) with %d run(s): %s; train more seeds (seed=1,2,42 -m): %s", len(few), runs, what, "; ".join(few))
    for system in systems.values():  # a copied run folder with its seed edited passes the seed check; its values do not
        values = [t.set_index("qid")[name].sort_index() for t in system.tables]
        for (i, a), (j, b) in itertools.combinations(enumerate(values), 2):
            if a.equals(b):
                log.warning("%s: runs %s and %s have the same %s on every query: one training counted twice (a copy of one "
                            "run folder)? Seeds of one configuration differ", system.name, system.runs[i], system.runs[j], name)
    per_query_means = {s.name: s.per_query(name) for s in systems.values()}
    pairs = []
    for a, b in itertools.combinations(systems, 2):
        if systems[a].baseline and systems[b].baseline:
            continue
        x, y = per_query_means[a], per_query_means[b].reindex(per_query_means[a].index)
        t_p, rand_p = paired_tests(x.to_numpy(), y.to_numpy(), resamples)
        seed_p = seed_test(systems[a].run_means(name), systems[b].run_means(name), systems[a].baseline, systems[b].baseline)
        # the difference's 95% t interval over queries: the paired t-test's, so it leaves out 0 where p (t-test) < 0.05
        difference, low, high = mean_ci((x - y).to_numpy())
        if np.allclose(x.to_numpy(), y.to_numpy()):  # equal within float error: the tests' p = 1, and no interval off 0
            low, high = min(low, 0.0), max(high, 0.0)
        pairs.append({"A": a, "B": b, "mean A": float(x.mean()), "mean B": float(y.mean()), "A - B": difference,
                      "A - B ci_low": low, "A - B ci_high": high,
                      "queries": len(x), "p (t-test)": t_p, "p (randomization)": rand_p, "p (seeds)": seed_p})
    tests = pd.DataFrame(pairs, columns=["A", "B", "mean A", "mean B", "A - B", "A - B ci_low", "A - B ci_high", "queries", "p (t-test)",
                                         "p (randomization)", "p (seeds)"])
    if not len(tests):  # one system, no pair: the same columns as any comparison's tests.csv
        for column in ("Holm p (t-test)", "Holm p (randomization)", "Holm p (seeds)", f"significant (Holm, alpha={alpha})"):
            tests[column] = pd.Series(dtype=bool if column.startswith("significant") else float)
    if len(tests):
        tests["Holm p (t-test)"] = holm(tests["p (t-test)"].tolist())
        tests["Holm p (randomization)"] = holm(tests["p (randomization)"].tolist())
        seeds = tests["p (seeds)"].to_numpy()
        testable = ~np.isnan(seeds)  # the family is the tests run: a pair with one run a side has no seed test
        tests["Holm p (seeds)"] = np.nan
        if testable.any():
            tests.loc[testable, "Holm p (seeds)"] = holm(seeds[testable].tolist())
        tests[f"significant (Holm, alpha={alpha})"] = (tests["Holm p (randomization)"] < alpha) & (tests["Holm p (seeds)"] < alpha)
        # The smallest two-sided randomization p-value: 2 / (resamples + 1), or with few queries, whose 2^n sign flips
        # scipy then enumerates exactly, 2 / 2^n (5 queries: 0.0625, so nothing could be flagged, without a word)
        queries = int(tests["queries"].min())
        floor = max(2 / (resamples + 1), 2.0 ** (1 - queries) if queries < 1000 else 0.0)
        if floor >= alpha / len(tests):
            exact = queries < 1000 and 2.0 ** (1 - queries) > 2 / (resamples + 1)
            log.warning("with %d pairs no randomization p-value can pass Holm's first threshold (alpha/%d = %.2g; the smallest p "
                        "with %s is %.2g): %s", len(tests), len(tests), alpha / len(tests),
                        f"{queries} queries (every sign flip counted)" if exact else f"{resamples} resamples", floor,
                        "compare on more queries" if exact else f"pass --resamples {int(np.ceil(20 * len(tests) / alpha))} or more")
    return summary, tests


def markdown(summary: pd.DataFrame, tests: pd.DataFrame, metric: str) -> str:
    lines = [f"## {metric}: mean and 95% t confidence interval over seeds", "",
             f"| system | runs | {metric} | 95% CI | per run |", "|---|---|---|---|---|"]
    for r in summary.to_dict("records"):
        ci = (f"n/a ({'one ranking' if r['kind'] == 'baseline' else '1 run'})" if np.isnan(r["ci_low"])
              else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]")
        lines.append(f"| {r['system']}{' (baseline)' if r['kind'] == 'baseline' else ''} | {r['runs']} | {r[metric]:.4f} | {ci} | {r['per_run']} |")
    if len(tests):
        flag = [c for c in tests.columns if c.startswith("significant")][0]
        lines += ["", f"## Tests over {int(tests['queries'].iloc[0])} queries (each configuration's per-query {metric} averaged over its seeds first) "
                  f"and over seeds (the runs' means); Holm over {len(tests)} pair(s); flagged when both hold", "",
                  "| A | B | A - B | 95% CI of A - B (over queries) | p t-test | p randomization | p seeds | Holm p t-test | Holm p randomization | "
                  "Holm p seeds | " + flag + " |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tests.to_dict("records"):
            seeds = "n/a (1 run)" if np.isnan(r["p (seeds)"]) else f"{r['p (seeds)']:.4g}"
            holm_seeds = "n/a" if np.isnan(r["Holm p (seeds)"]) else f"{r['Holm p (seeds)']:.4g}"
            lines.append(f"| {r['A']} | {r['B']} | {r['A - B']:+.4f} | [{r['A - B ci_low']:+.4f}, {r['A - B ci_high']:+.4f}] | {r['p (t-test)']:.4g} | {r['p (randomization)']:.4g} | {seeds} | "
                         f"{r['Holm p (t-test)']:.4g} | {r['Holm p (randomization)']:.4g} | {holm_seeds} | {'yes' if r[flag] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(summary) + 1.5))
    y = np.arange(len(summary))
    means = summary[metric].to_numpy()
    interval = ~summary["ci_low"].isna().to_numpy()  # one run (or a baseline): no bar, which would read as a tight interval
    err = np.vstack([means - summary["ci_low"].to_numpy(), summary["ci_high"].to_numpy() - means])[:, interval]
    colors = np.array(["tab:gray" if k == "baseline" else "tab:blue" for k in summary["kind"]])
    ax.errorbar(means[interval], y[interval], xerr=err, fmt="none", ecolor="black", capsize=4)
    ax.scatter(means[interval], y[interval], c=colors[interval], zorder=3)
    ax.scatter(means[~interval], y[~interval], facecolors="none", edgecolors=colors[~interval], zorder=3)
    labels = ["\n".join(textwrap.wrap(s, 50)) for s in summary["system"]]  # whole: configurations may differ at the end
    fig.set_size_inches(7, 0.35 * sum(label.count("\n") + 1 for label in labels) + 0.4 * len(labels) + 1.5)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(f"{metric}\n(mean over seeds, 95% t CI; gray: baseline;\nhollow: one run or ranking, no interval)", fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=120, format="png", bbox_inches="tight")  # the axis label was cut at the right (a probe)
    plt.close(fig)


def log_wandb(summary: pd.DataFrame, tests: pd.DataFrame, metric: str, project: str, directory: Path | None = None) -> None:
    """Log both tables as W&B tables in a ``compare`` job of ``project`` (its files under ``directory``)."""
    import wandb

    try:
        run = wandb.init(project=project, job_type="compare", config={"metric": metric}, dir=str(directory) if directory else None)
    except wandb.errors.Error as err:  # e.g. no network: W&B waits for its init_timeout, then raised CommError tracebacks
        from two_tower.core.errors import TrackingError
        from two_tower.training.wandb_check import start_failure

        raise TrackingError(start_failure(err, f"--wandb-project {project}")) from err
    try:
        run.log({"compare/configurations": wandb.Table(dataframe=summary), "compare/tests": wandb.Table(dataframe=tests.astype({c: str for c in tests.columns if tests[c].dtype == bool}))})
    finally:
        run.finish()
