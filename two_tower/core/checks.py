"""The range of every config value, stated once.

``training/config.py`` checks a composed config against ``RULES`` before any data is loaded, naming the
key; the constructors that take these values (encoders, losses, negatives, pseudo-queries) call
``check`` with the same rule, so a value is refused the same way from a config or from Python.
Relations between values (``range_min < range_max``, options that do not go together) stay with the
code that needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real

from two_tower.core.errors import ConfigError

# The choices of the encoder options (two_tower/model/encoders.py maps them to modules).
CELLS = ("rnn", "gru", "lstm")
POOLINGS = ("last", "mean", "max")
PACKINGS = ("auto", "packed", "masks")
# search.py's output formats (two_tower/cli/search.py renders them).
SEARCH_FORMATS = ("text", "jsonl")
# The largest finite float32 (weights and their updates are float32)
FLOAT32_MAX = 3.4028234663852886e38


def _duration_seconds(value) -> float | None:
    """``trainer.max_time`` in seconds, as Lightning's Timer reads it ('DD:HH:MM:SS', or timedelta's keywords); None if it
    cannot."""
    import re
    from datetime import timedelta

    if isinstance(value, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip())
        return timedelta(days=int(match[1]), hours=int(match[2]), minutes=int(match[3]), seconds=int(match[4])).total_seconds() if match else None
    try:
        return timedelta(**dict(value)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None


def _stemmer_languages() -> set[str]:
    import Stemmer

    return set(Stemmer.algorithms())


# key -> (type, check, what the check means); a key missing from the config is not checked.
INT, NUM, BOOL = (int,), (Real,), (bool,)
RULES = {
    "seed": (INT, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "threads": (INT, lambda v: v > 0, "a positive integer or null"),
    "trainer.max_epochs": (INT, lambda v: v >= 1 or v == -1, "a positive integer, or -1 (no limit: set trainer.max_steps)"),
    "trainer.accumulate_grad_batches": (INT, lambda v: v > 0, "a positive integer"),
    "trainer.check_val_every_n_epoch": (INT, lambda v: v > 0, "a positive integer"),
    "trainer.log_every_n_steps": (INT, lambda v: v > 0, "a positive integer"),
    "trainer.gradient_clip_val": (NUM, lambda v: v >= 0, "a number >= 0 or null"),
    # Lightning's own checks of these came after the data had loaded, or never: max_steps=0 and a max_time of 0 or less
    # trained nothing and exited 0, num_sanity_val_steps=abc was a traceback, deterministic=abc was taken (a probe)
    "trainer.max_steps": (INT, lambda v: v >= 1 or v == -1, "a positive integer, or -1 (no limit)"),
    "trainer.max_time": ((str, Mapping), lambda v: (_duration_seconds(v) or 0) > 0,
                         "a time longer than 0, 'DD:HH:MM:SS' (e.g. 00:12:00:00) or a mapping such as {hours: 12}, or null"),
    "trainer.num_sanity_val_steps": (INT, lambda v: v >= -1, "an integer >= 0, -1 (the whole validation), or null"),
    "trainer.deterministic": ((bool, str), lambda v: isinstance(v, bool) or v == "warn", "true, false, warn or null"),
    # 0 trained nothing and exited 0; -1 or abc were Lightning's line once the data had loaded (a probe)
    "trainer.limit_train_batches": (NUM, lambda v: v >= 1 if isinstance(v, Integral) else 0 < v <= 1,
                                    "a whole number of batches >= 1, a share of an epoch in (0, 1], or null"),
    # Lightning's: an int counts training batches, a float is a share of the epoch, a string or mapping a time; 0 was a
    # ZeroDivisionError traceback after the data had loaded (a probe); a count above an epoch's batches: check_val_check_interval
    "trainer.val_check_interval": ((Real, str, Mapping), lambda v: not isinstance(v, Real) or (v >= 1 if isinstance(v, Integral) else 0 < v <= 1),
                                   "a whole number of training batches >= 1, a share of an epoch in (0, 1], a time 'DD:HH:MM:SS', or null"),
    "data.batch_size": (INT, lambda v: v > 0, "a positive integer"),
    "data.eval_batch_size": (INT, lambda v: v > 0, "a positive integer"),
    "data.num_workers": (INT, lambda v: v >= 0, "an integer >= 0"),
    "data.bucket_batches": (INT, lambda v: v >= 0, "an integer >= 0"),
    "data.tokenize_workers": (INT, lambda v: v >= 1, "a positive integer (1: in this process)"),
    "data.max_train_rows": (INT, lambda v: v > 0, "a positive integer or null"),
    "data.max_val_rows": (INT, lambda v: v > 0, "a positive integer or null"),
    "data.tokenizer.min_freq": (INT, lambda v: v >= 1, "an integer >= 1"),
    "data.tokenizer.max_query_len": (INT, lambda v: v >= 1, "an integer >= 1"),
    "data.tokenizer.max_passage_len": (INT, lambda v: v >= 1, "an integer >= 1"),
    "data.tokenizer.keep_punctuation": (BOOL, lambda v: True, "true or false"),
    "data.tokenizer.split_hyphens": (BOOL, lambda v: True, "true or false"),
    "embeddings.dim": (INT, lambda v: v > 0, "a positive integer, or null (a vectors file's own)"),
    "embeddings.freeze": (BOOL, lambda v: True, "true or false"),
    "encoder.cell": ((str,), lambda v: v in CELLS, "one of " + ", ".join(CELLS)),
    "encoder.hidden_size": (INT, lambda v: v > 0, "a positive integer"),
    "encoder.num_layers": (INT, lambda v: v > 0, "a positive integer"),
    "encoder.bidirectional": (BOOL, lambda v: True, "true or false"),
    "encoder.dropout": (NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "encoder.pooling": ((str,), lambda v: v in POOLINGS, "one of " + ", ".join(POOLINGS)),
    "encoder.packing": ((str,), lambda v: v in PACKINGS, "one of " + ", ".join(PACKINGS)),
    "encoder.dim": (INT, lambda v: v > 0, "a positive integer or null"),
    "encoder.skip": (BOOL, lambda v: True, "true or false"),
    "encoder.bag_dim": (INT, lambda v: v >= 0, "an integer >= 0"),
    "encoder.bag_mix": (NUM, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "encoder.bag_passage_idf_power": (NUM, lambda v: 0 <= v <= 4, "a number in [0, 4]"),
    "encoder.bag_stemmer": ((str,), lambda v: v in _stemmer_languages(), "a PyStemmer language (e.g. english) or null"),
    "negatives.per_query": (INT, lambda v: v >= 0, "an integer >= 0"),
    "negatives.range_min": (INT, lambda v: v >= 0, "an integer >= 0"),
    "negatives.range_max": (INT, lambda v: v > 0, "a positive integer"),
    "negatives.refresh_every_n_epochs": (INT, lambda v: v >= 0, "an integer >= 0"),
    "negatives.passage_block_mb": (NUM, lambda v: v > 0, "a number > 0"),
    # above 1 (runs made before null was taken used 1.01) no passage is a near duplicate, as with null
    "negatives.near_duplicate_jaccard": (NUM, lambda v: 0 < v < float("inf"), "a number > 0 (1: only a passage of the same words is its duplicate; "
                                         "above 1 or null: no near-duplicate filter)"),
    "negatives.margin": (NUM, lambda v: 0 <= v < float("inf"), "a finite number >= 0, or null (no margin filter)"),
    "negatives.stemmer": ((str,), lambda v: v in _stemmer_languages(), "a PyStemmer language (e.g. english) or null"),
    "negatives.max_score_mb": (NUM, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "negatives.batch_size": (INT, lambda v: v > 0, "a positive integer"),
    "loss.margin": (NUM, lambda v: v >= 0, "a number >= 0"),
    # inf passed: every logit 0, no gradient, a run of untrained towers that exited 0 (a probe)
    "loss.temperature": (NUM, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "loss.in_batch": ((str,), lambda v: v in ("hardest", "all"), "hardest or all"),
    "loss.teacher_temperature": (NUM, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "loss.label_weight": (NUM, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "loss.margin_weight": (NUM, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "loss.learn_margin_scale": (BOOL, lambda v: True, "true or false"),
    "loss.margin_pairs": ((str,), lambda v: v in ("all", "mined"), "all or mined"),
    "loss.query_relation_weight": (NUM, lambda v: v >= 0 and v < float("inf"), "a finite number >= 0"),
    "data.pseudo_queries.count": (INT, lambda v: v >= 0, "an integer >= 0"),
    "data.pseudo_queries.min_words": (INT, lambda v: v >= 1, "an integer >= 1"),
    "data.pseudo_queries.max_words": (INT, lambda v: v >= 1, "an integer >= 1"),
    "teacher.batch_size": (INT, lambda v: v > 0, "a positive integer"),
    "teacher.max_seq_length": (INT, lambda v: v > 0, "a positive integer or null"),
    "teacher.threads": (INT, lambda v: v > 0, "a positive integer or null"),
    # float32's largest: the optimizer's step multiplies float32 weights by them (lr=1e300: a traceback in Adam's first step)
    "optimizer.lr": (NUM, lambda v: 0 < v <= FLOAT32_MAX, "a number > 0 (at most float32's 3.4e38)"),
    "optimizer.weight_decay": (NUM, lambda v: 0 <= v <= FLOAT32_MAX, "a number >= 0 (at most float32's 3.4e38)"),
    "optimizer.momentum": (NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "scheduler.min_lr_ratio": (NUM, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "scheduler.warmup_ratio": (NUM, lambda v: 0 <= v <= 1, "a number in [0, 1] (the share of the steps that warm up)"),
    "model.hash_buckets": (INT, lambda v: v >= 0, "an integer >= 0"),
    "embeddings.window": (INT, lambda v: v > 0, "a positive integer"),
    "embeddings.min_count": (INT, lambda v: v > 0, "a positive integer"),
    "embeddings.epochs": (INT, lambda v: v > 0, "a positive integer"),
    "embeddings.path": ((str,), lambda v: v.strip() != "", "a word2vec file's path"),
    "model.shared_towers": (BOOL, lambda v: True, "true or false"),
    "model.gather_across_devices": (BOOL, lambda v: True, "true or false"),
    # index.py, search.py, evaluate.py (a retriever's batch_size is checked as retriever.<name>.batch_size)
    "batch_size": (INT, lambda v: v > 0, "a positive integer"),
    "max_chars": (INT, lambda v: v >= 0, "an integer >= 0 (0 shows whole passages)"),
    "format": ((str,), lambda v: v in SEARCH_FORMATS, "one of " + ", ".join(SEARCH_FORMATS)),
    "index.add_chunk": (INT, lambda v: v > 0, "a positive integer"),
    "index.add_chunk_mb": (NUM, lambda v: 0 < v < float("inf"), "a positive number of megabytes or null"),
    "index.train_size": (INT, lambda v: v > 0, "a positive integer"),
    "index.train_mb": (NUM, lambda v: 0 < v < float("inf"), "a positive number of megabytes or null"),
    "overwrite": (BOOL, lambda v: True, "true or false"),
    "save_runs": (BOOL, lambda v: True, "true or false"),
    # the prf, rerank and smooth groups (search.py, serve.py, index.py, evaluate.py's retrievers): GroupSettings
    # (feedback vectors are held as [queries, depth, dim], MaxSim cosines as [query tokens, depth, tokens], smoothing's
    # neighbours as [rows, neighbours] hits: deeper is a mistake, not a setting)
    "prf.depth": (INT, lambda v: 0 <= v <= 1000, "a whole number from 0 (no feedback) to 1000"),
    "prf.alpha": (NUM, lambda v: 0 <= v < float("inf"), "a finite number >= 0"),
    "prf.beta": (NUM, lambda v: 0 <= v < float("inf"), "a finite number >= 0"),
    "rerank.depth": (INT, lambda v: v >= 1, "a whole number >= 1"),
    "rerank.weight": (NUM, lambda v: 0 <= v <= 1, "a number from 0 (first stage alone) to 1 (MaxSim alone)"),
    "rerank.dim": (INT, lambda v: v >= 1, "a whole number >= 1"),
    "rerank.max_tokens": (INT, lambda v: v >= 1, "a whole number >= 1"),
    "smooth.neighbours": (INT, lambda v: 1 <= v <= 1000, "a whole number from 1 to 1000"),
    "smooth.weight": (NUM, lambda v: 0 <= v <= 1, "a number from 0 (the passage's own vector) to 1 (its neighbours' mean)"),
    # evaluate.py's fusions (retriever.<name>.*; hybrid.WeightedScoreFusion, hybrid.ReciprocalRankFusion): a weight
    # below 0 ranks a part's best passages last, all 0 ranks by passage number; 1 / (k + rank) needs k >= 0
    "fusion.weight": (NUM, lambda v: 0 <= v < float("inf"), "a finite number >= 0"),
    "fusion.k": (NUM, lambda v: 0 <= v < float("inf"), "a finite number >= 0 (RRF's constant; 60 in Cormack et al.)"),
    "fusion.depth": (INT, lambda v: v >= 1, "a whole number >= 1 (each part's top passages that get a share)"),
}


# Rules whose null means something (no limit, the default, derived): each says "or null" in its meaning. Any other
# null is refused (optimizer.lr=null, data.batch_size=null ended in a traceback after the data had loaded).
NULLABLE = ("threads", "trainer.gradient_clip_val", "trainer.val_check_interval", "trainer.max_time", "trainer.num_sanity_val_steps",
            "trainer.deterministic", "trainer.limit_train_batches", "data.max_train_rows", "data.max_val_rows", "embeddings.dim", "encoder.dim",
            "encoder.bag_stemmer", "index.add_chunk_mb", "index.train_mb", "teacher.max_seq_length", "teacher.threads", "negatives.margin", "negatives.stemmer", "negatives.near_duplicate_jaccard")


def check(key: str, value, rule: str | None = None) -> None:
    """Raise ConfigError (a ValueError) naming ``key`` if ``value`` breaks its rule (``RULES[rule or key]``);
    None passes where the rule is in NULLABLE."""
    types, ok, meaning = RULES[rule or key]
    if value is None:
        if (rule or key) in NULLABLE:
            return
        raise ConfigError(f"{key}=null: must be {meaning}")
    if isinstance(value, bool) and bool not in types or not isinstance(value, types) or not ok(value):
        raise ConfigError(f"{key}={value!r}: must be {meaning}")


def whole_number(name: str, value, minimum: int = 1, meaning: str = "", maximum: int | None = None) -> int:
    """``value`` as an int if it is a whole number from ``minimum`` (to ``maximum``, where given; numpy's integers
    too; a bool is not one), or one ConfigError naming ``name`` (the Python API's counts: an Encoder's batch_size, a
    search's k; a float, None or a string failed deep inside, and 0 or -1 ran silently as 1; serve.py's port and
    limits)."""
    import numpy as np

    if not isinstance(value, Integral) or isinstance(value, (bool, np.bool_)) or value < minimum or (maximum is not None and value > maximum):
        span = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name}={value!r}: must be a whole number {span}{meaning}")
    return int(value)


def check_config(cfg, keys: list[str]) -> None:
    """``check`` every key of ``keys`` that ``cfg`` (a DictConfig) has."""
    from omegaconf import OmegaConf

    absent = object()
    for key in keys:
        value = OmegaConf.select(cfg, key, default=absent, throw_on_missing=False)
        if value is not absent:
            check(key, value)


def check_explicit_negatives(per_query: int) -> None:
    """Negatives options that draw explicit negatives (random, bm25, ann) need at least one a query: the train
    config check and their constructors refuse in these words."""
    if per_query < 1:
        raise ConfigError(f"negatives.per_query={per_query}: this negatives option needs at least 1")


def check_packing(packing: str, bidirectional: bool) -> None:
    """``encoder.packing=masks`` runs the RNN over the padding and masks it out after: a backward pass would start in
    the padding, so it needs a unidirectional RNN (it was a ValueError traceback after the data had loaded)."""
    if packing == "masks" and bidirectional:
        raise ConfigError("encoder.packing=masks needs a unidirectional RNN (a backward pass would start in the padding): "
                          "use encoder.packing=auto or packed with encoder.bidirectional=true")


def check_mining_range(range_min: int, range_max: int) -> None:
    """Mined negatives are drawn from ranks range_min..range_max of a query's ranking: a non-empty range."""
    if range_min >= range_max:
        raise ConfigError(f"negatives.range_min={range_min} must be below negatives.range_max={range_max}")


def unknown_setting(group: str, key: str, known: list[str]) -> str:
    """The one line for a key a config group does not have."""
    return f"{group}.{key}: unknown setting; {group} has {', '.join(known)}"


class GroupSettings:
    """Base of a config group's settings dataclass (``prf``, ``rerank``, ``smooth``): ``GROUP`` names the group;
    each field is checked against its rule, ``RULES["GROUP.field"]`` (null refused too: every field has a value)."""

    GROUP = ""

    def __post_init__(self):
        from dataclasses import fields

        for f in fields(self):
            key = f"{self.GROUP}.{f.name}"
            if key in RULES:
                check(key, getattr(self, f.name))  # null refused: none of these rules is NULLABLE

    @classmethod
    def from_config(cls, settings, name: str | None = None):
        """The group's mapping (``cfg.prf``, ...) as this dataclass (None, the group off, gives None); a key the
        dataclass has no field for, or a bad value, is a ConfigError naming it as ``name.key`` (``name``: where
        the settings were given, e.g. ``retriever.dense_prf``; default the group)."""
        from dataclasses import fields

        if settings is None:
            return None
        known = [f.name for f in fields(cls)]
        unknown = [k for k in settings if k not in known]
        if unknown:
            raise ConfigError(unknown_setting(name or cls.GROUP, unknown[0], known))
        try:
            return cls(**settings)
        except ConfigError as err:  # the dataclass names its keys after the group ("prf.alpha and prf.beta ...")
            if name is None:
                raise
            import re

            raise ConfigError(re.sub(rf"(?<![\w./]){re.escape(cls.GROUP)}\.", f"{name}.", str(err))) from None
