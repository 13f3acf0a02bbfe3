"""LightningDataModule: rows -> validated -> tokenized once (cached) -> bucketed triplet batches.

Rows are MS MARCO v1.1 rows (the Hub, a local folder of shards, synthetic ones) or a BEIR folder's judged queries
(``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), whose splits all rank its one corpus.

The cache folder holds everything derived from the raw rows for one (data, tokenizer, embeddings)
setting: the vocabulary, the embedding matrix aligned to it, both prepared splits and the row reports.
It is a ``two_tower.core.cache`` entry (built beside, renamed into place), so a killed run never leaves half a cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from two_tower.core import progress as progress_bars
from two_tower.core.cache import ContentCache, content_digest, default_root
from two_tower.core.errors import BeirError, ConfigError, DataSourceError
from two_tower.data import beir, msmarco, synthetic
from two_tower.data.batches import LengthSortedBatches, TokenBatches, TripletBatches, TripletBatchSampler
from two_tower.data.pseudo_queries import with_pseudo_queries
from two_tower.data.prepared import PreparedSplit
from two_tower.data.tokenizer import Tokenizer, oov_rate
from two_tower.data.embeddings import AlignedRows, EmbeddingSource, restore_tokenizer
from two_tower.data.sampling import NegativeSampler
from two_tower.data.teacher import SentenceTransformerTeacher, TeacherVectors

log = logging.getLogger(__name__)

# data_digests' entry for negatives=ann's checkpoint (beside the splits' "train" and "validation")
NEGATIVES_CHECKPOINT = "negatives.checkpoint"

CACHE_FORMAT = 10  # bump when the prepared format, validation rules or synthetic generator change
# in a BEIR folder's fingerprints: bump when how its files become prepared splits changes (2: training leaves out
# the validation and test splits' queries; 3: a training query's documents judged not relevant are its candidates;
# 4: the vocabulary is the training queries' and their judged documents' words, not the whole corpus's)
BEIR_PREPARED = 4


def _query_key(query: str) -> str:
    """A query as the leakage checks compare queries: lower case, white space joined."""
    return " ".join(query.lower().split())


class TwoTowerDataModule(L.LightningDataModule):
    def __init__(
        self,
        embeddings: EmbeddingSource,
        negatives: NegativeSampler,
        teacher: SentenceTransformerTeacher | None = None,
        path: str | None = None,
        hub_name: str = msmarco.HUB_DATASET,
        hub_config: str = msmarco.HUB_CONFIG,
        synthetic_rows: dict | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str | None = "test",
        max_train_rows: int | None = None,
        max_val_rows: int | None = None,
        tokenizer: dict | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        bucket_batches: int = 50,
        num_workers: int = 0,
        tokenize_workers: int = 1,
        cache_dir: str | None = None,
        seed: int = 0,
        pseudo_queries: dict | None = None,
    ):
        super().__init__()
        self.embeddings, self.negatives, self.teacher = embeddings, negatives, teacher
        self.teacher_vectors: TeacherVectors | None = None
        self.path, self.hub_name, self.hub_config = path, hub_name, hub_config
        if isinstance(synthetic_rows, DictConfig):
            synthetic_rows = OmegaConf.to_container(synthetic_rows, resolve=True)
        self.synthetic_rows = dict(synthetic_rows) if synthetic_rows else None
        self.splits = {"train": train_split, "validation": val_split}
        self.test_split = test_split
        self.max_rows = {"train": max_train_rows, "validation": max_val_rows, "test": None}
        self.tokenizer_settings = dict(tokenizer or {})
        # Words keep their combining marks, in composed form (``split_words``); not a config setting: a resumed run
        # saved before it sets False here (``train``), so it tokenizes as it was trained.
        self.tokenizer_settings.setdefault("unicode_words", True)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.bucket_batches, self.num_workers = bucket_batches, num_workers
        self.tokenize_workers = tokenize_workers
        self.cache_dir, self.seed = Path(cache_dir or default_root()).expanduser(), seed
        self.tokenizer: Tokenizer | None = None
        self.embedding_matrix: np.ndarray | None = None
        self.train: PreparedSplit | None = None
        self.val: PreparedSplit | None = None
        self.test: PreparedSplit | None = None  # a labelled test split, scored once after training
        self.data_digests: dict[str, str] | None = None  # PreparedSplit.content_digest of train and validation (setup)
        self.meta: dict = {}
        self.cache_hit: bool | None = None
        self.pseudo_queries = dict(pseudo_queries or {})
        self.num_labelled: int | None = None  # training rows before the pseudo-queries (None: none added)

    # ------------------------------------------------------------------ raw rows and the cache key
    def _raw_rows(self) -> dict[str, tuple[Callable[[], object], str]]:
        """{role: (rows(), fingerprint)}; rows() gives a datasets.Dataset or a list of dicts. Synthetic
        rows are only generated on a cache miss (their fingerprint is their settings)."""
        if self.synthetic_rows is not None:
            counts, spec = synthetic.split_rows(self.synthetic_rows)
            n_train, n_val, n_test = counts["train"], counts["validation"], counts["test"]
            stream = _RowStream(lambda: synthetic.iter_rows(n_train + n_val + n_test, **spec))
            digest = hashlib.sha1(json.dumps([n_train, n_val, sorted(spec.items())] + ([n_test] if n_test else [])).encode()).hexdigest()
            out = {
                "train": (lambda: stream.rows(0, n_train), f"synthetic-{digest}-train"),
                "validation": (lambda: stream.rows(n_train, n_train + n_val), f"synthetic-{digest}-val"),
            }
            if n_test and self.test_split is not None:  # test_split=null: never (test_rows were scored all the same: a probe)
                out["test"] = (lambda: stream.rows(n_train + n_val, n_train + n_val + n_test), f"synthetic-{digest}-test")
            return out
        if self.beir:
            return self._beir_splits()
        out = {}
        for role, split in self.splits.items():
            ds = msmarco.load_split(split, self.path, self.hub_name, self.hub_config)
            out[role] = (lambda ds=ds: ds, ds._fingerprint)
        if self.test_split and self.path and msmarco.has_local_split(self.path, self.test_split):
            ds = msmarco.load_split(self.test_split, self.path)
            out["test"] = (lambda ds=ds: ds, ds._fingerprint)
        return out

    @property
    def beir(self) -> bool:
        """Whether ``path`` is a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): every split
        ranks its one corpus, which training reads whole (negatives are mined from it); the vocabulary is the training
        queries' words and those of the documents they judge, as an MS MARCO run's is its training rows'."""
        return self.synthetic_rows is None and beir.is_beir_folder(self.path)

    def _beir_splits(self) -> dict[str, tuple[Callable[[], object], str]]:
        """{role: (the split as an untokenized PreparedSplit and its report, fingerprint)} of a BEIR folder: train,
        validation, and test where ``qrels/<test_split>.tsv`` exists. Missing files are one error naming the setting."""
        root = Path(self.path).expanduser()
        splits = dict(self.splits)
        if self.test_split and (root / beir.QRELS / f"{self.test_split}.tsv").is_file():
            splits["test"] = self.test_split
        for role, split in splits.items():
            try:
                beir.check_files(root, split)
            except BeirError as err:
                setting = {"train": "data.train_split", "validation": "data.val_split"}.get(role)
                raise BeirError(f"{err}; name another with {setting}=NAME" if setting and "qrels" in str(err) else str(err)) from None
        shared = content_digest([root / beir.CORPUS, root / beir.QUERIES])
        out = {}
        for role, split in splits.items():
            qrels = root / beir.QRELS / f"{split}.tsv"
            fingerprint = f"beir{BEIR_PREPARED}-{shared}-{content_digest([qrels])}"
            out[role] = (lambda held_out=None, split=split, role=role: self._read_beir(root, split, role, held_out), fingerprint)
        return out

    def _read_beir(self, root: Path, split: str, role: str, held_out: dict[str, set[str]] | None = None):
        """(the split as an untokenized PreparedSplit, its report: queries with judgements read, kept, lines skipped
        per file and reason, the ids of every query the split judges); at most ``max_rows[role]`` queries, in the order
        of queries.jsonl. ``held_out``: {role: query ids} of the validation and test splits, which training leaves out
        (counted as ``also_a_<role>_query``): a query judged in two splits is trained on only if it is evaluated on none."""
        collection = beir.load_beir(root, split, for_training=role == "train")
        judged = set(collection.query_ids)
        limit = self.max_rows[role]
        if limit is not None:
            collection.query_ids, collection.query_texts = collection.query_ids[:limit], collection.query_texts[:limit]
        left_out = {}
        if role == "train" and held_out:
            for other, ids in held_out.items():
                rows = [i for i, q in enumerate(collection.query_ids) if q in ids]
                if rows:
                    left_out[f"also_a_{other}_query"] = len(rows)
                    rows = set(rows)
                    collection.query_ids = [q for i, q in enumerate(collection.query_ids) if i not in rows]
                    collection.query_texts = [t for i, t in enumerate(collection.query_texts) if i not in rows]
        prepared = beir.prepared_split(collection, for_training=role == "train")
        report = {"total": len(collection.query_ids) + sum(left_out.values()), "kept": prepared.num_queries,
                  "skipped": {name: dict(counts) for name, counts in collection.skipped.items() if counts}}
        report["skipped"].update(left_out)
        if role == "train" and prepared.num_queries < len(collection.query_ids):
            report["skipped"]["no_relevant_document_in_corpus"] = len(collection.query_ids) - prepared.num_queries
        if role == "train" and not prepared.num_queries:
            held = ", ".join(f"{n} judged in the {reason[len('also_a_'):-len('_query')]} split too" for reason, n in left_out.items())
            raise DataSourceError(f"{root / beir.QRELS / f'{split}.tsv'}: no training query has a relevant document in the corpus"
                                  + (f" and is not a validation or test query (left out: {held})" if held else ""))
        return prepared, report, judged

    def cache_key(self, fingerprints: dict[str, str]) -> str:
        spec = {
            "format": CACHE_FORMAT,
            "data": fingerprints,
            "max_rows": self.max_rows,
            # unicode_words=False (a run saved before it, resumed) keys as before it existed: its cache entries hold
            "tokenizer": sorted((k, v) for k, v in self.tokenizer_settings.items() if not (k == "unicode_words" and v is False)),
            "embeddings": self.embeddings.identity(),
        }
        return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Build the cache if it is missing (runs once, on the main process)."""
        if self.cache_hit is not None:  # already prepared by this process
            return
        raw = self._raw_rows()
        self._cache = ContentCache(self.cache_dir, "prepared")
        key = self.cache_key({r: fp for r, (_, fp) in raw.items()})
        self._cache_path = self._cache.path(key)
        if self._cache.get(key) is not None:
            self.cache_hit = True
            log.info("Tokenization cache hit: %s (no re-tokenizing)", self._cache_path)
            return
        self.cache_hit = False
        log.info("Tokenization cache miss: preparing %s", self._cache_path)
        self._cache.check_writable()
        self._build_cache(raw, key)
        release_freed_memory()  # the rows and token lists of the build are garbage now: give them back

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        if not hasattr(self, "_cache_path"):
            self.prepare_data()
        path = self._cache_path
        self.meta = json.loads((path / "meta.json").read_text())
        self.tokenizer = restore_tokenizer(json.loads((path / "tokenizer.json").read_text()))
        rows = AlignedRows(np.load(path / "embeddings.npy"), np.load(path / "drawn_rows.npy"), self.meta["drawn_scale"], self.meta["oov_vocab"])
        self.embedding_matrix = rows.draw(self.seed)
        self.train = PreparedSplit.load(path / "train")
        corpus = (path / "train", self.train) if self.beir else None  # one corpus: held once, not read again a split
        self.val = PreparedSplit.load(path / "validation", corpus)
        self.test = PreparedSplit.load(path / "test", corpus) if (path / "test").is_dir() else None
        for role, report in self.meta["reports"].items():  # skipped rows are a warning: the data is not what it says
            log.log(logging.WARNING if report.get("skipped") else logging.INFO, "[%s] rows: %s", role, report)
        log.info(
            "Vocabulary %d words; embeddings=%s: %.1f%% of vocabulary and %.1f%% of training tokens have no pre-trained vector",
            len(self.tokenizer), self.embeddings.describe(), 100 * self.meta["oov_vocab"], 100 * self.meta["oov_tokens"],
        )
        for role, ranges in self.meta.get("token_ranges", {}).items():
            log.info("[%s] tokens: %s", role, ", ".join(f"{100 * share:.1f}% {name}" for name, share in ranges.items()))
        log.info(
            "train: %d queries, %d passages; validation: %d queries (%d evaluated), %d passages",
            self.train.num_queries, self.train.num_passages, self.val.num_queries, len(self.val.evaluated_queries()), self.val.num_passages,
        )
        if self.test is None and self.meta.get("test_skipped"):  # said again on a cache hit
            log.log(logging.WARNING if self.beir else logging.INFO, "test split skipped (no labelled query to score): %s", self.meta["test_skipped"])
        if self.test is not None:
            log.info("test: %d queries (%d evaluated), %d passages; scored once, after training, with the best-on-validation checkpoint",
                     self.test.num_queries, len(self.test.evaluated_queries()), self.test.num_passages)
        self.check_overlap()
        # what the run trains and validates on, wherever the files are: checkpoints record it, a resume compares it
        self.data_digests = {"train": self.train.content_digest(), "validation": self.val.content_digest()}
        mined_with = getattr(self.negatives, "checkpoint_digest", None)
        if mined_with is not None:  # negatives=ann: the model the pools are mined with, by its bytes (it may be replaced in place)
            self.data_digests[NEGATIVES_CHECKPOINT] = mined_with
        if self.pseudo_queries.get("count"):
            self.num_labelled = self.train.num_queries
            self.train = with_pseudo_queries(self.train, self.tokenizer, **self.pseudo_queries, seed=self.seed)
            log.info("train: %d pseudo-queries cropped from the training passages (labelled by the teacher only)", self.train.num_queries - self.num_labelled)
        if self.teacher is not None:  # encoded once, then read from its cache (keyed by the texts)
            labelled = self.num_labelled or self.train.num_queries
            self.teacher_vectors = self.teacher.vectors(self.train.query_texts[:labelled], self.train.passage_texts)
            if labelled < self.train.num_queries:  # pseudo-queries: a cache entry of their own
                pseudo = self.teacher.vectors(self.train.query_texts[labelled:], [])
                self.teacher_vectors = TeacherVectors(np.concatenate([self.teacher_vectors.queries, pseudo.queries]), self.teacher_vectors.passages)
        if hasattr(self.negatives, "unicode_words"):  # BM25's words follow the run's rule (a resumed older run's)
            self.negatives.unicode_words = self.tokenizer_settings["unicode_words"]
        self.negatives.prepare(self.train)

    def check_overlap(self) -> int:
        """Count (and warn about) validation queries that are also training queries: their metrics measure
        memorisation, not retrieval (leakage). Compared after lower-casing and joining white space."""
        train = {_query_key(q) for q in self.train.query_texts}
        self.val_train_overlap = sum(_query_key(q) in train for q in self.val.query_texts)
        if self.val_train_overlap and self.synthetic_rows is not None:
            # Synthetic queries are a few keywords of one of a few topics: repeats are by construction, not leakage.
            log.info("%d of %d synthetic validation queries are also training queries (a few keywords of a few topics)", self.val_train_overlap, self.val.num_queries)
        elif self.val_train_overlap:
            log.warning(
                "%d of %d validation queries also appear in the training split (leakage: their metrics measure "
                "memorisation); remove them from one of the splits", self.val_train_overlap, self.val.num_queries,
            )
        self.check_test_overlap(train)
        self.check_passage_overlap()
        return self.val_train_overlap

    def check_test_overlap(self, train: set[str]) -> tuple[int, int]:
        """Count (and warn about) test queries that are also training or validation queries (the same comparison):
        the test figure is the number to report, and these measure memorisation or the checkpoint's selection. Only
        validation was checked; a test split of training rows was scored without a word. Returns the two counts."""
        self.test_overlap = (0, 0)
        if self.test is None or self.synthetic_rows is not None:
            return self.test_overlap
        val = {_query_key(q) for q in self.val.query_texts}
        queries = [_query_key(q) for q in self.test.query_texts]
        in_train, in_val = sum(q in train for q in queries), sum(q in val for q in queries)
        self.test_overlap = (in_train, in_val)
        if in_train or in_val:
            log.warning("%d of %d test queries also appear in the training split and %d in the validation split (leakage: the test "
                        "figure, the number to report, measures memorisation or the selection of the checkpoint); remove them from "
                        "the test split", in_train, len(queries), in_val)
        return self.test_overlap

    def check_passage_overlap(self) -> int:
        """Say (an info line, not leakage: MS MARCO's candidate lists share passages across queries) how many
        validation passages are training passages too, and how many of the validation's selected ones: training has
        seen those texts, as candidates of other queries. Returns the first count."""
        if self.beir:  # one corpus for every split: training reads it whole, by design
            log.info("train and validation rank one corpus (a BEIR folder, %d passages): training mines negatives from all of it; the vocabulary "
                     "is the training queries' words and their judged documents', never a validation query's", self.val.num_passages)
            return self.val.num_passages
        train = set(self.train.passage_texts)
        shared = sum(text in train for text in self.val.passage_texts)
        if shared and self.synthetic_rows is None:
            selected = np.unique(self.val.positives.values)
            shared_selected = sum(self.val.passage_texts[i] in train for i in selected)
            log.info("%d of %d validation passages are training passages too, %d of the %d the validation queries select "
                     "(as other queries' candidates: training has seen them)", shared, self.val.num_passages, shared_selected, len(selected))
        return shared

    # ------------------------------------------------------------------ building the cache
    def _build_cache(self, raw, key: str) -> None:
        start = time.perf_counter()
        splits, reports, test_skipped = {}, {}, None
        held_out: dict[str, set[str]] = {}  # a BEIR folder's validation and test queries, read before the training ones
        for role, (load_rows, _) in sorted(raw.items(), key=lambda item: item[0] == "train") if self.beir else raw.items():
            if self.beir:
                try:
                    loaded = load_rows(held_out=held_out) if role == "train" else load_rows()
                except BeirError as err:  # qrels/test.tsv judging no query relevant: as an MS MARCO test split without labels
                    if role != "test":
                        raise
                    test_skipped = str(err)  # said by setup(), on every run that reads this cache
                    continue
                splits[role], reports[role], judged = loaded
                held_out[role] = judged
                first = next(iter(splits.values()))  # one corpus: held once (this split's copy goes now)
                if splits[role] is not first and splits[role].passage_texts == first.passage_texts:
                    splits[role].passage_texts = first.passage_texts
                continue
            rows = load_rows()
            limit = self.max_rows[role]
            if limit is not None:
                rows = rows.select(range(min(limit, len(rows)))) if hasattr(rows, "select") else itertools.islice(rows, limit)
            try:
                total = min(len(rows), limit if limit is not None else len(rows)) if hasattr(rows, "__len__") else getattr(rows, "total", None)
                progress = progress_bars.bar(_iter_rows(rows), total=total, desc=f"Reading {role} rows", unit="row", mininterval=2.0)
                clean, report = msmarco.validate_rows(progress, role, for_training=role == "train")
            except DataSourceError as err:
                if role != "test":
                    raise
                test_skipped = str(err)  # e.g. the Hub's unlabelled test; said by setup(), on every run that reads this cache
                continue
            splits[role] = PreparedSplit.from_rows(clean)  # texts and passage lists; tokenized once the vocabulary is built
            del clean
            reports[role] = {"total": report.total, "kept": report.kept, "skipped": dict(report.skipped)}
            if report.first:
                reports[role]["first_skipped"] = dict(report.first)
            if report.corpus_only:  # kept (in the ranked corpus) although not training rows: kept + skipped = total
                reports[role]["kept_not_training_rows"] = dict(report.corpus_only)

        if self.beir:  # in the usual order again: train, validation, test
            splits, reports = ({role: d[role] for role in raw if role in d} for d in (splits, reports))
        # the training queries, then the training passages in first-appearance order
        train = splits["train"]
        if self.beir:  # the documents its queries judge, not the whole corpus, which validation and test rank too
            passages = [train.passage_texts[i] for i in dict.fromkeys(train.candidates.values.tolist())]
        else:
            passages = train.passage_texts
        train_texts = train.query_texts + passages
        del train, passages
        settings = {k: v for k, v in self.tokenizer_settings.items() if k != "min_freq"}
        vectors = self.embeddings.load(train_texts, settings.get("keep_punctuation", False), settings.get("split_hyphens", False),
                                       settings.get("unicode_words", False))
        # The vocabulary comes from training text only; the vectors' other words extend it (and any other
        # word gets a hashed id), so validation words are represented exactly as unseen test words are.
        extension = self.embeddings.extension_config() if vectors is not None else None
        tokenizer = Tokenizer.build(
            train_texts,
            min_freq=self.tokenizer_settings.get("min_freq", 2),
            pretrained_words=set(vectors.words) if vectors else None,
            extension_words=vectors.words if extension else None,
            extension_source=extension,
            **settings,
        )
        if vectors is not None:
            rows = vectors.aligned(tokenizer.words)
            oov_tokens = oov_rate(train_texts, vectors.index, tokenizer.split)
        else:  # every row but PAD drawn with the run's seed
            drawn = np.ones(len(tokenizer), dtype=bool)
            drawn[0] = False
            rows = AlignedRows(np.zeros((len(tokenizer), self.embeddings.dim), dtype=np.float32), drawn, 0.3, 1.0)
            oov_tokens = 1.0
        oov_vocab = rows.oov
        del train_texts, vectors
        with self._cache.put(key) as tmp:
            (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.state_dict()))
            # no seeded numbers in the cache (every seed shares it): the rows to draw and their scale instead
            np.save(tmp / "embeddings.npy", rows.matrix)
            np.save(tmp / "drawn_rows.npy", rows.drawn)
            ranges = {}
            corpus = None  # a BEIR folder's passage tokens: every split ranks its one corpus, tokenized once
            for role in list(splits):  # one split at a time: it goes once it is tokenized and saved
                split = splits.pop(role).tokenized(tokenizer, self.tokenize_workers, role, corpus)
                corpus = split.passage_tokens if self.beir else None
                split.save(tmp / role)
                ranges[role] = token_ranges(split, tokenizer)
                del split
            meta = {
                "reports": reports,
                "embeddings": self.embeddings.identity(),
                "drawn_scale": rows.scale,
                "oov_vocab": float(oov_vocab),
                "oov_tokens": float(oov_tokens),
                "token_ranges": ranges,
                **({"test_skipped": test_skipped} if test_skipped else {}),
                "seconds": round(time.perf_counter() - start, 2),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        log.info("Prepared data in %.1fs -> %s", time.perf_counter() - start, self._cache.path(key))

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: creating an iterator then does not draw from the global torch RNG,
            # so dropout sees the same random numbers in a resumed run as in an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _batches_done_this_epoch(self) -> int:
        """Batches of the current epoch already trained on, when resuming from a mid-epoch checkpoint."""
        loop = self.trainer.fit_loop if self.trainer is not None else None
        return loop.epoch_loop.batch_progress.current.completed if loop is not None and loop.restarted_mid_epoch else 0

    def check_processes(self, world: int) -> None:
        """Refuse, in one line, a training split of fewer batches than ``world`` processes: each trains
        ``batches // world`` of them, so none would train. train.py asks before Lightning starts the other
        processes (one line, not one a process); the sampler asks again with the world Lightning set up."""
        batches = TripletBatchSampler.batches_in(self.train.num_queries, self.batch_size)
        if batches < world:
            raise ConfigError(
                f"data.batch_size={self.batch_size}: the training split's {self.train.num_queries} rows make {batches} batch(es), fewer than "
                f"the {world} processes, so no process would train; lower data.batch_size, or run fewer processes (trainer.devices)"
            )

    def train_sampler(self) -> TripletBatchSampler:
        rank, world = self._rank_world()
        if world > 1:  # every process trains the same number of batches (DDP's collectives need it)
            self.check_processes(world)
            batches = TripletBatchSampler.batches_in(self.train.num_queries, self.batch_size)
            if batches % world and rank == 0:
                log.info("%d of the %d training batches an epoch are left out: each of the %d processes trains %d (the batches are "
                         "shuffled every epoch, so which are left out changes)", batches % world, batches, world, batches // world)
        return TripletBatchSampler(
            self.train,
            self.negatives,
            self.batch_size,
            seed=self.seed,
            bucket_batches=self.bucket_batches,
            rank=rank,
            world_size=world,
            batches_done=self._batches_done_this_epoch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(TripletBatches(self.train, self.teacher_vectors, self.num_labelled), self.train_sampler())

    def val_dataloader(self) -> list[DataLoader]:
        """[passages of the validation split, its evaluated queries]; the module ranks after both."""
        return self.encode_loaders(self.val)

    def test_dataloader(self) -> list[DataLoader]:
        """[passages of the test split, its evaluated queries], as ``val_dataloader``."""
        if self.test is None:
            raise RuntimeError("this data has no labelled test split")
        return self.encode_loaders(self.test)

    def encode_loaders(self, split: PreparedSplit) -> list[DataLoader]:
        rank, world = self._rank_world()
        passages = LengthSortedBatches(split.passage_tokens.lengths, self.eval_batch_size, rank, world)
        queries = LengthSortedBatches(split.query_tokens.lengths, self.eval_batch_size, rank, world, items=split.evaluated_queries())
        return [self._loader(TokenBatches(split.passage_tokens), passages), self._loader(TokenBatches(split.query_tokens), queries)]


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap memory back to the operating system (glibc's malloc_trim;
    elsewhere nothing more than gc), so the build's peak does not stay in the process's RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def token_ranges(split: PreparedSplit, tokenizer: Tokenizer) -> dict[str, float]:
    """``Tokenizer.id_ranges`` over a split's query and passage tokens."""
    return tokenizer.id_ranges(split.query_tokens.values, split.passage_tokens.values)


class _RowStream:
    """Consecutive ranges of one generated row stream (synthetic train, validation, test rows), read in
    that order without holding the rows: each range continues the stream (a range before the current
    position restarts it)."""

    def __init__(self, make):
        self.make, self.iterator, self.position = make, None, 0

    def rows(self, start: int, stop: int):
        if self.iterator is None or start < self.position:
            self.iterator, self.position = self.make(), 0
        return _Counted(self._take(start, stop), stop - start)

    def _take(self, start: int, stop: int):
        for _ in itertools.islice(self.iterator, start - self.position):
            pass
        self.position = start
        for row in itertools.islice(self.iterator, stop - start):
            self.position += 1
            yield row


class _Counted:
    """An iterator that knows how many items it holds (for the progress bar)."""

    def __init__(self, iterator, total: int):
        self.iterator, self.total = iterator, total

    def __iter__(self):
        return self.iterator


def _iter_rows(rows):
    """Rows as dicts; a datasets.Dataset is read in Arrow batches (much faster than row by row)."""
    if not hasattr(rows, "iter"):  # a list or a stream of dicts
        yield from rows
        return
    for batch in rows.iter(batch_size=1024):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))

