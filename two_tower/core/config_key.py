"""A run's configuration key: its Hydra overrides except the seed (and settings that do not change the
result, such as output and cache paths, threads or loggers), sorted. Seeds of one configuration share the
key, so the comparison command and W&B can group them.

The comparison command groups by the run's *composed* configuration (``.hydra/config.yaml``, less the same
settings: ``composed_key``), so ``loss=infonce`` (the default) and no override, or ``+x=1`` and ``x=1``,
are one configuration; the override key is its label.

``data.path`` stays in the key: it names the data trained on, so runs on two data folders are two
configurations even when they are scored on the same validation queries. It is written as an absolute
path (resolved against the run's working directory, without reading the disk), so one folder named
relatively from two places is one configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from two_tower.core.errors import ConfigError

# Overrides that name where or how a run is done, not what is trained.
IGNORED = ("seed", "threads", "ckpt_path", "paths.", "hydra.", "logger", "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.cache_dir", "data.num_workers",
           # how many processes, threads and MB of memory a step uses, and where caches go: the same rows, pools and
           # vectors whatever they are (a resume on a smaller machine was refused a lower negatives.max_score_mb: a probe)
           "data.tokenize_workers", "data.eval_batch_size", "negatives.max_score_mb", "negatives.passage_block_mb", "negatives.batch_size",
           "negatives.cache_dir", "teacher.threads", "teacher.batch_size", "teacher.cache_dir")
# Callbacks are kept (early stopping, which epoch the checkpoint keeps, ... change what is trained or reported)
# except those that only show, time or save for resuming, and the fields that only name where files go.
HARMLESS_CALLBACKS = ("progress_bar", "rich_progress_bar", "model_summary", "rich_model_summary", "epoch_timings", "rng_state", "checkpoint_on_stop", "last_checkpoint", "learning_rate_monitor")
HARMLESS_CALLBACK_FIELDS = ("dirpath", "filename", "auto_insert_metric_name", "enable_version_counter", "verbose", "refresh_rate")
# Overrides naming a file or folder whose contents the run learns from: made absolute against the run's cwd.
DATA_PATHS = ("data.path",)
# Settings the packaged configs gained after runs were made, with the value such a run had (its code's default),
# so a run composed before and one composed after are one configuration: filled where the setting's node exists.
ADDED_SETTINGS = {"trainer.num_nodes": 1, "encoder.packing": "auto", "data.synthetic_rows.test_rows": 0}
# Classes the packaged configs name that replaced others doing the same: a run composed with the old one is the same
# configuration, and resumes (the checkpoint callbacks became ResumableCheckpoint, Lightning's ModelCheckpoint with
# its record of the best kept across a moved run folder; its checkpoints' states are ModelCheckpoint's).
RENAMED_TARGETS = {"lightning.pytorch.callbacks.ModelCheckpoint": "two_tower.training.callbacks.ResumableCheckpoint"}


# Settings a resumed run may change besides the IGNORED ones but the seed: how long it trains, on what hardware,
# where the data now lies (the vocabulary check refuses other data), and what only names the run. (Not
# optimized_metric: the checkpoint callbacks' state is keyed by what they monitor, and is dropped when it changes.)
RESUME_MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.devices", "trainer.num_nodes",
                     "trainer.accelerator", "trainer.strategy", "trainer.sync_batchnorm", "trainer.log_every_n_steps", "data.path", "task_name", "tags")
# How long a run trains, which a learning-rate scheduler fixes: its restored state keeps the run's length, and a longer
# resumed run trained at the schedule's end (learning rate 0 with warmup_linear).
SCHEDULE_LENGTH = ("trainer.max_epochs", "trainer.max_steps")
# A setting a run or its resume does not have, in changed_settings' triples.
NOT_SET = object()


# Callbacks the key leaves out that a resume still needs as the run had them: the RNG states it restores, the
# checkpoints that stop and save it (removed, ~callbacks.rng_state, the resumed run drew other random numbers).
RESUME_KEEPS_CALLBACKS = ("rng_state", "checkpoint_on_stop", "last_checkpoint")


def may_change_on_resume(name: str, scheduled: bool = False) -> bool:
    """Whether a resumed run may give a setting (dotted name) another value than the run it continues had;
    ``scheduled``: that run has a learning-rate scheduler."""
    parts = name.split(".")
    if parts[0] == "callbacks" and len(parts) > 1 and parts[1] in RESUME_KEEPS_CALLBACKS and parts[-1] not in HARMLESS_CALLBACK_FIELDS:
        return False
    if scheduled and name in SCHEDULE_LENGTH:
        return False
    return (ignored(name) and name != "seed") or any(name == k or name.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def changed_settings(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(name, saved value, current value; NOT_SET where absent) of the settings, as composed (interpolations
    unresolved), that differ between a run's configuration and a resume's and may not (``may_change_on_resume``);
    sorted by name. ``encoder.dim`` may change where both have ``encoder.skip=true``, which does not use it: a run trained
    with one before train.py refused it is resumed without it (or with null)."""
    before, after = _renamed(flatten(saved)), _renamed(flatten(current))
    scheduled = bool(saved.get("scheduler"))
    unused = {"encoder.dim"} if before.get("encoder.skip") is True and after.get("encoder.skip") is True else set()
    return [(name, before.get(name, NOT_SET), after.get(name, NOT_SET)) for name in sorted(before.keys() | after.keys())
            if not may_change_on_resume(name, scheduled) and name not in unused and before.get(name, NOT_SET) != after.get(name, NOT_SET)]


def _absolute(override: str, cwd: str | None) -> str:
    name, sep, value = override.partition("=")
    if not sep or cwd is None or value in ("", "null") or value.startswith("${"):
        return override
    return f"{name}={os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))}"


def ignored(name: str) -> bool:
    """Whether a setting (dotted name) is left out of the key: IGNORED, a harmless callback or callback field."""
    parts = name.split(".")
    if parts[0] == "callbacks" and len(parts) > 1:
        return parts[1] in HARMLESS_CALLBACKS or parts[-1] in HARMLESS_CALLBACK_FIELDS
    return any(name.startswith(i) if i.endswith(".") else name == i or name.startswith(i + ".") for i in IGNORED)


def config_key(overrides: list[str], cwd: str | None = None) -> str:
    """``"a=1 b=2"`` from Hydra override strings, without the seed and the IGNORED keys, ``data.path``
    made absolute against ``cwd`` (the run's working directory) when given; "(defaults)" if none is left."""
    kept = []
    for override in overrides:
        name = override.lstrip("+~").split("=", 1)[0]
        if ignored(name):
            continue
        kept.append(_absolute(override, cwd) if name in DATA_PATHS else override)
    return " ".join(sorted(kept)) or "(defaults)"


def _renamed(settings: dict) -> dict:
    """Flat ``settings`` with each ``..._target_`` that RENAMED_TARGETS names replaced by its successor."""
    return {name: RENAMED_TARGETS.get(value, value) if name.endswith("._target_") and isinstance(value, str) else value
            for name, value in settings.items()}


def flatten(config, prefix: str = "") -> dict:
    """``{"a.b": 1, ...}`` from nested mappings (an empty mapping is a value of its own)."""
    if not isinstance(config, dict) or (prefix and not config):
        return {prefix: config}
    flat = {}
    for name, value in config.items():
        flat.update(flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def composed_settings(config: dict, cwd: str | None = None) -> dict:
    """A composed run configuration (``.hydra/config.yaml``: interpolations unresolved, so ``${seed}`` is the
    same text in every seed) as dotted settings, without the IGNORED ones, ``data.path`` made absolute."""
    settings = {name: value for name, value in _renamed(flatten(config)).items() if not ignored(name)}
    for name, value in ADDED_SETTINGS.items():
        node = name.rsplit(".", 1)[0] + "."
        if name not in settings and any(key.startswith(node) for key in settings):
            settings[name] = value
    for name in DATA_PATHS:
        if isinstance(settings.get(name), str):
            settings[name] = _absolute(f"{name}={settings[name]}", cwd).partition("=")[2]
    return settings


def composed_key(settings: dict) -> str:
    """``composed_settings`` as one canonical text: equal for runs that train and report alike, whatever
    overrides named them."""
    return json.dumps(settings, sort_keys=True, default=str)


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not readable YAML ({' '.join(str(err).split())[:300]})") from err


def run_overrides(run_dir: str | Path) -> list[str]:
    """The overrides Hydra saved in ``run_dir/.hydra/overrides.yaml`` ([] if there are none)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    overrides = _read_yaml(path) if path.is_file() else None
    if overrides is not None and not isinstance(overrides, list):
        raise ConfigError(f"{path}: not a list of overrides")
    other = next((i for i, o in enumerate(overrides or []) if not isinstance(o, str)), None)
    if other is not None:  # Hydra writes strings (key=value): "- seed: 1" or "- [1, 2]" was the override "{'seed': 1}" (a probe)
        raise ConfigError(f"{path}: item {other + 1} is not an override (key=value) but {overrides[other]!r}")
    return list(overrides or [])


def run_config(run_dir: str | Path) -> dict | None:
    """The composed configuration Hydra saved in ``run_dir/.hydra/config.yaml``, or None without one."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    config = _read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a mapping of settings")
    return config


def run_cwd(run_dir: str | Path) -> str | None:
    """The working directory the run was started from (``hydra.runtime.cwd`` in ``.hydra/hydra.yaml``), or None."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    record = _read_yaml(path)
    runtime = ((record if isinstance(record, dict) else {}).get("hydra") or {}).get("runtime") or {}
    return runtime.get("cwd")


def current_config_key() -> str | None:
    """The key of the running Hydra job (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return config_key(list(hydra_cfg.overrides.task), hydra_cfg.runtime.get("cwd"))
