"""The ``evaluate.py`` recipe: one split, several retrievers, one protocol, one comparison table.

Every retriever ranks the split's whole corpus for each query with a selected passage and its own
candidates; ``metrics.split_per_query`` (what validation uses, through ``dense_split_per_query``) turns the rankings into MRR@10,
Recall@1/10/100, nDCG@10 and rerank MRR@10. Writes ``metrics.json`` and ``metrics.md`` to ``cfg.out``,
each query's values per retriever in ``per_query/<retriever>.parquet`` (``python -m two_tower.cli.compare``
pairs them with training runs' ``per_query/test.parquet``) and, with ``save_runs``, TREC run files (``qid Q0 docid rank score tag``; qid = the query's row in the
validated split, docid = the passage's number in first-appearance order, as ``index.py`` numbers a
split) plus ``qrels.txt``, so two systems can be compared query by query (e.g. with trec_eval).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from two_tower.core import run_record
from two_tower.core.atomic import atomic_write, check_writable, discard, fsync_folder, sweep_stale_temps, temp_path
from two_tower.core.checks import check, check_config
from two_tower.core.threads import kept, set_threads
from two_tower.data import beir
from two_tower.data.beir import is_beir_folder
from two_tower.data.msmarco import local_split_files
from two_tower.data.prepared import PreparedSplit
from two_tower.retrieval.corpus import load_split_rows
from two_tower.core.errors import ConfigError, TwoTowerError
from two_tower.core import per_query
from two_tower.core.metrics import DEFAULT_KS, mean_metrics, split_per_query
from two_tower.retrieval.bm25 import BM25Scorer
from two_tower.retrieval.index import MANIFEST
from two_tower.retrieval.retriever import Rankings, SharedScores, SplitRetriever, query_chunks

log = logging.getLogger(__name__)

COLUMNS = {"mrr@10": "MRR@10", "recall@1": "R@1", "recall@10": "R@10", "recall@100": "R@100", "ndcg@10": "nDCG@10", "rerank_mrr@10": "rerank MRR@10"}


def build_retrievers(cfg: DictConfig) -> dict[str, SplitRetriever]:
    """Instantiate ``cfg.retriever`` in order; a fusion's ``parts`` name retrievers built before it."""
    built: dict[str, SplitRetriever] = {}
    for name, spec in cfg.retriever.items():  # every setting first: the dense retriever loads its checkpoint when built
        check_retriever_settings(name, spec)
    for name, spec in cfg.retriever.items():
        if "parts" in spec:
            missing = [p for p in spec.parts if p not in built]
            if missing:
                raise ConfigError(f"retriever {name} fuses {missing}, which are not selected before it; add them to retriever=[...]")
            built[name] = _instantiate(spec, parts=[built[p] for p in spec.parts])
        else:
            built[name] = _instantiate(spec)
    return built


def check_retriever_settings(name: str, spec: DictConfig) -> None:
    """Settings a retriever's constructor would take without complaint and then misuse (a batch size below 1
    encodes nothing; an unknown stemmer fails deep in PyStemmer): one ConfigError naming retriever.<name>.<key>."""
    if "batch_size" in spec:
        check(f"retriever.{name}.batch_size", spec.batch_size, rule="batch_size")
    if str(spec.get("_target_", "")).endswith((".WeightedScoreFusion", ".ReciprocalRankFusion")):  # its weights, RRF's k and depth
        from two_tower.retrieval.hybrid import check_weights

        weights = spec.get("weights")
        if not OmegaConf.is_list(weights):
            raise ConfigError(f"retriever.{name}.weights={weights!r}: give a list, one weight a part")
        check_weights(list(weights), f"retriever.{name}.weights")
        for key, rule in (("k", "fusion.k"), ("depth", "fusion.depth")):
            if key in spec:
                check(f"retriever.{name}.{key}", spec[key], rule=rule)
    # retrievers over a settings class (BM25, feedback, smoothing, MaxSim): its keys and values, named as given
    from two_tower.retrieval.maxsim import MaxSimRerank
    from two_tower.retrieval.prf import RocchioPRF
    from two_tower.retrieval.smoothing import NeighbourSmoothing

    target = str(spec.get("_target_", ""))
    for suffix, settings in ((".BM25Retriever", BM25Scorer), (".PRFRetriever", RocchioPRF), (".SmoothedRetriever", NeighbourSmoothing), (".MaxSimRetriever", MaxSimRerank)):
        if target.endswith(suffix):
            settings.from_config({k: v for k, v in spec.items() if k not in ("_target_", "parts")}, f"retriever.{name}")


def _instantiate(spec: DictConfig, **kwargs):
    """hydra.utils.instantiate, re-raising our own errors (e.g. a missing checkpoint) unwrapped."""
    try:
        return hydra.utils.instantiate(spec, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, TwoTowerError):
            raise err.__cause__ from None
        raise


def load_split(cfg: DictConfig) -> PreparedSplit:
    """The split's queries, unique passages, positives and candidates (retrievers tokenize for themselves):
    MS MARCO v1.1 rows, or a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)."""
    if is_beir_folder(cfg.data.path):
        return beir.prepared_split(beir.load_beir(cfg.data.path, cfg.split))
    rows = load_split_rows(cfg.split, cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)
    return PreparedSplit.from_rows(rows)  # texts and passage lists only, as a BEIR split's


def check_split_files(cfg: DictConfig) -> None:
    """A local split's files exist (a BEIR folder's corpus, queries and qrels; MS MARCO shards): one error
    naming what is missing, before any checkpoint or index is loaded."""
    if is_beir_folder(cfg.data.path):
        beir.check_files(cfg.data.path, cfg.split)
    elif cfg.data.path:
        local_split_files(cfg.data.path, cfg.split)


def evaluate_split(split: PreparedSplit, retrievers: dict[str, SplitRetriever], per_query_out: dict | None = None) -> tuple[dict[str, dict], dict[str, Rankings]]:
    """Metrics and rankings of every retriever on ``split`` (queries with a selected passage); with
    ``per_query_out``, also each retriever's per-query table (``two_tower.core.per_query``) in it.

    The queries are ranked a chunk at a time by every retriever in turn, and a retriever that reads others' scores (a
    fusion's parts, feedback's or a rerank's first stage) is given the scores they computed for their own rows (``SharedScores``):
    each part is scored once. A retriever's ``seconds`` are its own preparing and scoring (a fusion's: the fusing)."""
    query_rows = split.evaluated_queries()
    relevant = split.relevance(query_rows)
    seconds, pieces, k = {}, {name: [] for name in retrievers}, max(DEFAULT_KS)
    for name, retriever in retrievers.items():
        start = time.perf_counter()
        retriever.prepare(split)
        seconds[name] = time.perf_counter() - start
    shared = SharedScores(Counter(id(part) for retriever in retrievers.values() for part in retriever.score_parts()))
    try:
        for retriever in retrievers.values():
            retriever.shared = shared
        for rows in query_chunks(query_rows, SplitRetriever.chunk):
            shared.start(rows)
            for name, retriever in retrievers.items():
                start = time.perf_counter()
                scores = retriever.scores(rows)
                pieces[name].append(retriever.rank_chunk(rows, scores, k))
                shared.offer(retriever, scores)
                del scores
                seconds[name] += time.perf_counter() - start
        shared.start(None)
    finally:
        for retriever in retrievers.values():
            retriever.shared = None
    metrics, rankings = {}, {}
    for name in retrievers:
        rankings[name] = Rankings.join(pieces.pop(name))
        positions, values = split_per_query(rankings[name].ranked, rankings[name].reranked, relevant)
        metrics[name] = {**mean_metrics(values), "seconds": round(seconds[name], 2)}
        if per_query_out is not None:
            per_query_out[name] = per_query.split_frame(split, query_rows[positions], values)
        log.info("%s: %s", name, {k: round(v, 4) for k, v in metrics[name].items()})
    return metrics, rankings


def markdown_table(metrics: dict[str, dict]) -> str:
    columns = {k: v for k, v in COLUMNS.items() if all(k in m for m in metrics.values())}
    lines = ["| retriever | " + " | ".join(columns.values()) + " | seconds |", "|---" * (len(columns) + 2) + "|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in columns) + f" | {m['seconds']:.1f} |")
    return "\n".join(lines)


def _qid(split: PreparedSplit, row: int) -> str:
    return split.query_ids[row] if split.query_ids is not None else str(row)


def _docid(split: PreparedSplit, pid: int) -> str:
    return split.passage_ids[pid] if split.passage_ids is not None else str(pid)


def check_trec_ids(split: PreparedSplit) -> None:
    """TREC runs and qrels are white-space separated: an id with white space in it (a BEIR folder's ``"doc 4"``)
    would shift the columns of its lines (a reader takes ``doc`` for the id and ``4`` for the rank). A ConfigError
    naming the first, before any retriever runs."""
    for kind, ids in (("query", split.query_ids), ("document", split.passage_ids)):
        # a NUL too: trec_eval reads C strings, so "d\x002" would be the document "d" there (a BEIR id written "d\u00002" is accepted)
        bad = next((i for i in ids or () if not i or any(c.isspace() or c == "\0" for c in i)), None)
        if bad is not None:
            raise ConfigError(f"save_runs=true: the {kind} id {bad!r} is empty or holds white space or a NUL, which a TREC run file "
                              "cannot (its columns are split at white space, and trec_eval ends a text at a NUL); rename the ids, or set save_runs=false")


def write_trec_run(path: Path, split: PreparedSplit, query_rows: np.ndarray, rankings: Rankings, tag: str) -> None:
    with atomic_write(path, "w") as f:
        for row, ids, scores in zip(query_rows.tolist(), rankings.ranked.tolist(), rankings.scores.tolist()):
            for rank, (pid, score) in enumerate(((p, s) for p, s in zip(ids, scores) if p >= 0), start=1):
                # the shortest text that reads back as the same float: rounding (it was %.6f) made ties of scores
                # that differed (Cranfield: 0.7070170045 and 0.7070164084), which trec_eval then broke by docid
                f.write(f"{_qid(split, row)} Q0 {_docid(split, pid)} {rank} {float(score)!r} {tag}\n")


def write_qrels(path: Path, split: PreparedSplit, query_rows: np.ndarray) -> None:
    with atomic_write(path, "w") as f:
        for row, relevance in zip(query_rows.tolist(), split.relevance(query_rows)):
            gains = relevance if isinstance(relevance, dict) else dict.fromkeys(relevance.tolist(), 1)
            for pid, gain in gains.items():
                f.write(f"{_qid(split, row)} 0 {_docid(split, pid)} {int(gain)}\n")


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Run every selected retriever on the split; returns {retriever: metrics}. ``threads`` applies to this call only."""
    with kept():
        return _evaluate_checked(cfg)


def _evaluate_checked(cfg: DictConfig) -> dict[str, dict]:
    set_threads(cfg.get("threads"))
    check_config(cfg, ["save_runs"])
    if not cfg.get("retriever"):  # retriever=[] leaves no retriever key at all
        raise ConfigError("no retriever selected; e.g. retriever=[dense,bm25,hybrid]")
    out = Path(cfg.out).expanduser()  # as check_writable and index.py read it: out="~/x" was checked (and made) there, then written to ./~/x
    created = not out.exists()
    check_writable(out, f"out={cfg.out}", min_free_bytes=1 << 20)  # before any work, not after it (it makes the folder)
    check_out_clashes(out, list(cfg.retriever), bool(cfg.save_runs))
    try:
        return _evaluate(cfg, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):  # a failed evaluation leaves no empty out= folder
            out.rmdir()
        raise


def _evaluate(cfg: DictConfig, out: Path) -> dict[str, dict]:
    check_split_files(cfg)  # and the split's files, before the checkpoint loads
    retrievers = build_retrievers(cfg)
    split = load_split(cfg)
    query_rows = split.evaluated_queries()
    if cfg.save_runs:
        check_trec_ids(split)
    log.info("%s: %d queries evaluated (%d in the split), %d passages", cfg.split, len(query_rows), split.num_queries, split.num_passages)
    tables: dict = {}
    run_record.work_started()  # a refusal from here on keeps the run folder's log of what ran
    metrics, rankings = evaluate_split(split, retrievers, tables)

    # Everything goes to a folder beside the outputs first, then replaces the previous evaluation's outputs in
    # ``out`` (replace_outputs): no file of an earlier evaluation is left among these, and metrics.json comes last.
    for folder in (out, out / "runs", out / "per_query"):
        sweep_stale_temps(folder)  # temporary files of a killed evaluation
    staged = temp_path(out / "evaluation")
    staged.mkdir()
    try:
        write_outputs(cfg, staged, split, query_rows, metrics, rankings, tables, retrievers)
        replace_outputs(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("%s: %d queries, %d passages\n%s\nWrote %s", cfg.split, len(query_rows), split.num_passages, markdown_table(metrics), out / "metrics.md")
    return metrics


# The files evaluations wrote in ``out`` (paths relative to it), listed beside them: a later evaluation into the same
# folder replaces these and nothing else. It replaced everything named per_query/, runs/ or qrels.txt, whoever wrote
# it: evaluate.py out=<a training run> removed the run's per_query/val_best.parquet, and out=/tmp its runs/ folder.
OWNED_FILE = ".evaluation_outputs.json"
_FILES = ("metrics.json", "metrics.md", "qrels.txt")
_PER_NAME = {"per_query": ".parquet", "runs": ".trec"}


def output_paths(names: list[str], save_runs: bool) -> list[str]:
    """What an evaluation of retrievers ``names`` writes in ``out``, metrics.json first (it is moved in last)."""
    paths = ["metrics.json", "metrics.md", *(f"per_query/{name}.parquet" for name in names)]
    if save_runs:
        paths += ["qrels.txt", *(f"runs/{name}.trec" for name in names)]
    return paths


def _is_output_path(path: object) -> bool:
    """Whether ``path`` (read from a file in ``out``) names an evaluation output inside ``out``, nothing else."""
    if not isinstance(path, str):
        return False
    parts = path.split("/")
    if len(parts) == 1:
        return path in _FILES
    return (len(parts) == 2 and parts[0] in _PER_NAME and parts[1].endswith(_PER_NAME[parts[0]])
            and parts[1] not in (".", "..") and "\\" not in parts[1] and "\0" not in parts[1])


def earlier_outputs(out: Path) -> set[str]:
    """The files earlier evaluations wrote in ``out``: those ``OWNED_FILE`` lists or, in a folder evaluated before that
    list was kept, those its metrics.json names (each retriever's table and run, qrels.txt, metrics.md). An unreadable
    list or report owns nothing, so nothing of it is replaced (a clash is refused instead)."""
    try:
        if (out / OWNED_FILE).is_file():
            listed = json.loads((out / OWNED_FILE).read_text())
            return {path for path in listed if _is_output_path(path)} if isinstance(listed, list) else set()
        if (out / "metrics.json").is_file():
            names = list(json.loads((out / "metrics.json").read_text())["metrics"])
            # its runs and qrels.txt only if it wrote runs (save_runs=true): every retriever's is there
            ran = bool(names) and all((out / "runs" / f"{name}.trec").is_file() for name in names if isinstance(name, str))
            return {path for path in output_paths(names, save_runs=ran) if _is_output_path(path)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return set()


def check_out_clashes(out: Path, names: list[str], save_runs: bool) -> None:
    """Before any work: a file this evaluation would write into ``out`` that no earlier evaluation wrote there is one
    ConfigError naming it (evaluate.py would have replaced it); so is an index folder (its manifest names every file it
    holds, and one with an evaluation's files in it was refused by search.py and serve.py)."""
    if not out.is_dir():
        return
    if (out / MANIFEST).is_file():
        raise ConfigError(f"out={out} is an index folder ({MANIFEST}): evaluate.py's files there would leave it unloadable "
                          "(search.py and serve.py refuse a folder holding files its manifest does not name); give another out=")
    for folder in _PER_NAME:
        if (out / folder).exists() and not (out / folder).is_dir():
            raise ConfigError(f"out={out}: {folder} is a file there, where evaluate.py writes a folder; give another out= or move it away")
    owned = earlier_outputs(out)
    clashes = [path for path in output_paths(names, save_runs) if (out / path).exists() and path not in owned]
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise ConfigError(f"out={out}: {clashes[0]}{more} is there and no earlier evaluation wrote it ({OWNED_FILE} and "
                          "metrics.json do not name it); this evaluation would replace it: give another out= or move it away")


def replace_outputs(staged: Path, out: Path) -> None:
    """Move ``staged``'s outputs into ``out`` in place of an earlier evaluation's (``earlier_outputs``; other files
    are left alone). The list of owned files first takes in both, then metrics.json goes, then the rest of the earlier
    outputs; the new ones come in with metrics.json last: a kill in between leaves no metrics.json rather than a mix
    of two evaluations, and a list that still names whatever is left, for the next evaluation to replace."""
    new = sorted(str(path.relative_to(staged)) for path in staged.rglob("*") if path.is_file())
    new.sort(key=lambda path: path == "metrics.json")  # metrics.json last
    owned = earlier_outputs(out)
    _record(out, owned | set(new))
    if "metrics.json" in owned:
        discard(out / "metrics.json")
    for path in sorted(owned - {"metrics.json"}):
        discard(out / path)
    for path in new:
        (out / path).parent.mkdir(exist_ok=True)
        os.replace(staged / path, out / path)
    for folder in _PER_NAME:
        if (out / folder).is_dir() and not any((out / folder).iterdir()):
            (out / folder).rmdir()
        elif (out / folder).is_dir():
            fsync_folder(out / folder)
    _record(out, set(new))
    fsync_folder(out)


def _record(out: Path, paths: set[str]) -> None:
    with atomic_write(out / OWNED_FILE, "w") as f:
        f.write(json.dumps(sorted(paths), indent=1))


def write_outputs(cfg: DictConfig, out: Path, split, query_rows, metrics, rankings, tables, retrievers) -> None:
    for name, table in tables.items():  # each query's metrics, for paired comparisons (python -m two_tower.cli.compare)
        per_query.write(table, out / "per_query" / f"{name}.parquet")
    table = markdown_table(metrics)
    report = {
        "split": cfg.split,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "queries": len(query_rows),
        "passages": split.num_passages,
        "metrics": metrics,
        "retrievers": OmegaConf.to_container(cfg.retriever, resolve=True),
        # How open the vocabulary had to be for this split (dense retrievers): shares of tokens.
        "token_ranges": {name: r.token_ranges for name, r in retrievers.items() if getattr(r, "token_ranges", None) is not None},
    }
    with atomic_write(out / "metrics.json", "w") as f:
        f.write(json.dumps(report, indent=2))
    with atomic_write(out / "metrics.md", "w") as f:
        f.write(f"{cfg.split}: {len(query_rows)} queries, {split.num_passages} passages\n\n{table}\n")
    if cfg.save_runs:
        (out / "runs").mkdir(exist_ok=True)
        write_qrels(out / "qrels.txt", split, query_rows)
        for name, ranking in rankings.items():
            write_trec_run(out / "runs" / f"{name}.trec", split, query_rows, ranking, name)
