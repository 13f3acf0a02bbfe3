"""What every command shares: where the configs are, composing one, reporting bad input.

- ``CONF_DIR``: the Hydra configs ship inside the package (``two_tower/conf``), so every command finds
  them the same way whether the package is installed with ``-e`` or not; ``@hydra.main`` commands pass it
  as ``config_path`` and the compose-API commands (search, serve) to ``compose``.
- Bad input (any ``TwoTowerError``) is one ``error: ...`` line on stderr and exit status 2;
  ``TWO_TOWER_DEBUG=1`` re-raises it with the traceback instead.
- Threads: ``threads=`` of every config goes through ``two_tower.core.threads.set_threads``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import two_tower.core.cache  # noqa: F401  (registers ${two_tower_cache:}, the default cache folder of conf/paths)
from two_tower.core.atomic import nearest_existing, not_a_folder
from two_tower.core.checks import unknown_setting
from two_tower.core.commands import command  # (also registers ${two_tower_command:NAME}, the commands in --help texts)
from two_tower.core.errors import TwoTowerError
from two_tower.core.stop import log_to_files

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def debugging() -> bool:
    """Whether ``TWO_TOWER_DEBUG`` asks for tracebacks instead of one-line errors."""
    return os.environ.get("TWO_TOWER_DEBUG", "") not in ("", "0")


def compose(config_name: str, overrides: list[str], return_hydra_config: bool = False):
    """The packaged config ``config_name`` with Hydra ``overrides`` (no run folder is written)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def report(err: TwoTowerError) -> int:
    """Print ``err`` as one ``error:`` line (or re-raise it under TWO_TOWER_DEBUG); returns exit status 2. In a job of
    a sweep (``-m``) the line names the job first (``sweep_job``)."""
    if debugging():
        raise err
    job = sweep_job()
    line = f"error: {job + ': ' if job else ''}{err}"
    print(line, file=sys.stderr)
    log_to_files(line)
    return 2


# The keys a sweep varies (its command line's sweep overrides and its search space, hydra.sweeper.params), set in each
# job's process by SweepJobs.on_job_start: what tells a job's overrides from those every job shares.
_SWEPT_KEYS: frozenset[str] = frozenset()


class SweepJobs(Callback):
    """Notes at a multirun's start which settings its jobs vary, for ``sweep_job`` (hydra.callbacks in
    conf/hydra/default.yaml). A remote launcher (SLURM) runs ``on_job_start`` in the job's process, with a copy of
    this object."""

    def __init__(self) -> None:
        self.swept: frozenset[str] = frozenset()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        swept, fixed = set(), set()
        try:
            task = OmegaConf.select(config, "hydra.overrides.task", default=None, throw_on_missing=False) or []
            for override in OverridesParser.create().parse_overrides(list(task)):
                (swept if override.is_sweep_override() else fixed).add(override.get_key_element().lstrip("+~"))
        except Exception:  # noqa: BLE001 (a line Hydra's sweeper reports itself)
            pass
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None, throw_on_missing=False) or {}
        # a key of the search space that the command line sets to one value is that value in every job
        swept.update(key for key in (str(k).lstrip("+~") for k in params) if key not in fixed)
        self.swept = frozenset(swept)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        global _SWEPT_KEYS
        _SWEPT_KEYS = self.swept


def sweep_job() -> str | None:
    """In a job of a sweep (``-m``): which job, as its ``error:`` line names it (``job #1 of the sweep (seed=2, in
    multirun/X/1)``): Hydra's job number (as its launcher's ``#1 : ...`` line), the overrides the sweep varies with
    this job's values, and its folder. None outside a sweep's job (a single run, the sweep's checks before its jobs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    num = OmegaConf.select(hydra_cfg, "job.num", default=None, throw_on_missing=False)
    if hydra_cfg.get("mode") != RunMode.MULTIRUN or num is None:
        return None
    task = OmegaConf.select(hydra_cfg, "overrides.task", default=None, throw_on_missing=False) or []
    varied = [str(o) for o in task if str(o).split("=", 1)[0].lstrip("+~") in _SWEPT_KEYS]
    folder = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None, throw_on_missing=False)
    inside = [*varied, f"in {folder}"] if folder else varied
    return f"job #{num} of the sweep" + (f" ({', '.join(inside)})" if inside else "")


def drop_stdout(stream=None) -> None:
    """Point stdout (or ``stream``, e.g. stderr) at /dev/null, so the interpreter's flush at exit does not raise
    again (after the reader of a pipe closed it: ``| head``)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
    except (OSError, ValueError, AttributeError):
        pass


def say(line: str) -> None:
    """``line`` on stderr; a reader that has gone (a script that read what it waited for and closed the pipe,
    ``2>&1 | head -2``), or a stderr that cannot be written (a full disk: ENOSPC) or is none (``2>&-``), changes nothing
    else: stderr then goes to /dev/null (a server went on serving without it)."""
    if sys.stderr is None:  # started with stderr closed (2>&-): print(file=None) wrote the line to stdout
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # OSError: BrokenPipeError and the others; ValueError: stderr closed in this process
        drop_stdout(sys.stderr)


@contextlib.contextmanager
def exit_on_error():
    """Bad input inside the block ends the process with one ``error:`` line and exit status 2; Ctrl-C with one
    ``interrupted`` line and status 130, as a shell reports SIGINT (outputs are written beside and renamed, so
    nothing half-written is left; a traceback said nothing more)."""
    try:
        yield
    except TwoTowerError as err:
        sys.exit(report(err))
    except KeyboardInterrupt:
        sys.exit(interrupted_status())


def interrupted_status() -> int:
    """Ctrl-C's one ``interrupted`` line and exit status, 130 (as a shell reports SIGINT); to be called while a
    KeyboardInterrupt is handled, which it raises again under TWO_TOWER_DEBUG (the traceback)."""
    if debugging():
        raise  # noqa: PLE0704 (the KeyboardInterrupt being handled)
    say("interrupted")
    return 130


def composition_error(config_name: str, argv: list[str]) -> str | None:
    """The one line for command-line overrides Hydra cannot compose into ``config_name`` (an unknown key, an
    unknown option of a group, a sweep without --multirun), or None. Commands with Hydra flags (``-m``,
    ``--cfg``, ...) or ``hydra.mode=`` are left to Hydra, whose report spans lines."""
    if any(arg.startswith("-") or arg.lstrip("+").startswith("hydra.mode=") for arg in argv):  # -m, or hydra.mode=MULTIRUN
        return None
    groups = command_group_settings(config_name)
    message = group_override_error(argv, groups) if groups else None
    if message:
        return message
    try:
        cfg = compose(config_name, argv, return_hydra_config=True)
    except Exception as err:  # Hydra's composition errors
        return hydra_error_line(config_name, err, argv)
    return added_setting_error(config_name, argv) or run_dir_error(cfg) or single_run_sweep_error(cfg, argv) or path_setting_error(config_name, cfg, argv)


# Settings that name a file, a folder or a split: Hydra reads `data.path=2024` as a number and `out=true` as a boolean,
# which failed deep in the command with "TypeError: expected str, bytes or os.PathLike object" (exit 1).
# Per command (index.py's `index` is its FAISS settings, search.py's the folder to search).
PATH_SETTINGS = {
    "train": ("data.path", "ckpt_path", "negatives.checkpoint", "embeddings.path", "teacher.model"),
    "index": ("ckpt", "corpus", "out", "data.path"),
    "evaluate": ("ckpt", "out", "data.path"),
    "search": ("index", "ckpt"),
    "serve": ("index", "ckpt"),
}
SPLIT_SETTINGS = ("split", "data.train_split", "data.val_split", "data.test_split")
# Split settings that must name a split (null is refused); index.py's split is unused with corpus=, a test split optional.
NAMED_SPLITS = {"train": ("data.train_split", "data.val_split"), "evaluate": ("split",)}
# Path settings that must name a folder (null is refused): where index.py and evaluate.py write (out=null was a TypeError traceback).
NAMED_PATHS = {"index": ("out",), "evaluate": ("out",)}


def path_setting_error(config_name: str, cfg, argv: list[str] = ()) -> str | None:
    """The one line for a path or split setting of command ``config_name`` that is not text (None where its null is
    allowed); ``argv``: the overrides, for the value as typed."""
    from omegaconf import OmegaConf

    absent = object()
    for key in (*PATH_SETTINGS.get(config_name, ()), *SPLIT_SETTINGS):
        try:
            value = OmegaConf.select(cfg, key, default=absent, throw_on_missing=False)
        except Exception:  # an interpolation only the run resolves
            continue
        if value is absent or isinstance(value, str) or (value is None and key not in (*NAMED_SPLITS.get(config_name, ()), *NAMED_PATHS.get(config_name, ()))):
            continue
        if value is None and key in NAMED_PATHS.get(config_name, ()) and OmegaConf.is_interpolation(cfg, key):
            continue  # the default, ${hydra:runtime.output_dir}: None only where a Hydra run of this process left it unset (tests)
        what = "a split name" if key in SPLIT_SETTINGS else "a path"
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value is None:
            return f"{key}=null: must be {what}"
        typed = next((a.split("=", 1)[1] for a in reversed(list(argv)) if a.lstrip("+").split("=", 1)[0] == key and "=" in a), str(shown))
        if isinstance(shown, (list, dict)):
            return f"{key}={typed}: must be {what}, not a {'list' if isinstance(shown, list) else 'mapping'}"
        return f"{key}={typed}: must be {what}, and the command line read it as {type(shown).__name__}: quote it ({key}='{typed}')"
    return None


def single_run_sweep_error(cfg, argv: list[str]) -> str | None:
    """The one line for a sweeper or launcher chosen without ``-m`` (``hparams_search=optuna``,
    ``hydra/launcher=slurm``): Hydra ran one plain local job and exited 0, as if the search or the cluster jobs had
    run. None otherwise."""
    from omegaconf import OmegaConf

    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    for group in ("hydra/sweeper", "hydra/launcher"):
        option = choices.get(group)
        if option not in (None, "basic"):
            chosen = next((a for a in argv if a.lstrip("+").split("=", 1)[0] in (group, "hparams_search")), f"{group}={option}")
            return f"{chosen} chooses {'how a sweep searches' if group == 'hydra/sweeper' else 'where a sweep runs its jobs'}; add -m to run it as one (python {Path(sys.argv[0]).name if sys.argv else 'train.py'} -m {chosen} ...), or leave it out for a single run"
    return None


# Plain settings whose keys are another function's arguments, checked there (data.synthetic_rows: synthetic.iter_rows).
OPEN_SETTINGS = ("data.synthetic_rows",)

# The config groups (folders of conf/) each command reads, as its --help lists them; conf/ also holds the
# other commands' groups, which a command would compose and then ignore (train.py +retriever=bm25 trained as if it
# were not there).
COMMAND_GROUPS = {
    "train": ("data", "embeddings", "encoder", "negatives", "loss", "teacher", "optimizer", "scheduler", "logger", "trainer",
              "callbacks", "paths", "debug", "experiment", "hparams_search"),
    "index": ("smooth",),
    "evaluate": ("retriever",),
    "search": ("prf", "rerank"),
    "serve": ("prf", "rerank"),
}


def group_options(group: str) -> list[str]:
    """The options of a config group: its folder's ``*.yaml`` names, sorted."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def foreign_group_error(config_name: str, group: str, override: str) -> str | None:
    """The one line for ``override`` selecting ``group``, a folder of conf/ that ``config_name``'s command does not
    read (another command's group: ``train.py retriever=bm25``), or None when the command reads it (or it is no group)."""
    if config_name not in COMMAND_GROUPS or group in COMMAND_GROUPS[config_name] or group == "hydra" or not (Path(CONF_DIR) / group).is_dir():
        return None
    owners = [f"{name}.py" for name, groups in COMMAND_GROUPS.items() if group in groups]
    whose = f"a group of {' and '.join(owners)}" if owners else "a group other configs use"
    ours = ", ".join(COMMAND_GROUPS[config_name])
    return f"{override}: {group} is not a config group of {config_name}.py ({whose}); its groups are {ours} ({command(config_name)} --help)"


def added_setting_error(config_name: str, argv: list[str]) -> str | None:
    """The one line for a ``+key=value`` that Hydra would add and the command never read: a key new to a node of
    plain settings (``+model.shared_tower=false``, a typo of ``model.shared_towers``; ``+bogus=1``), or a setting
    of a config group that is off (``+scheduler.warmup_ratio=0.1`` with ``scheduler=none``, which failed in
    ``configure_optimizers`` after the data had loaded). Keys new to an object's settings (a node with
    ``_target_``: ``+trainer.limit_train_batches=3``) are checked against its signature by the command itself;
    a new object in a collection of them (``+retriever.w4={_target_: ...}``, a callback, a logger) and group
    selections (``+teacher=minilm``) are left alone. None when every added key is read."""
    import difflib
    import re

    from omegaconf import DictConfig, OmegaConf

    added = [a for a in argv if a.startswith("+") and "=" in a]
    if not added:
        return None
    try:
        base = compose(config_name, [a for a in argv if a not in added])
    except Exception:  # the other overrides need an added key: left to the command
        return None
    absent = object()
    for override in added:
        key = override.lstrip("+").split("=", 1)[0]
        parts = key.split(".")
        group = (Path(CONF_DIR) / parts[0]).is_dir()
        # +group=option (a group this command reads is left alone: +teacher=minilm), or a setting of a group its config
        # has not (+trainer.x=1 to index.py): another command's group
        if group and (len(parts) == 1 or parts[0] not in base):
            foreign = foreign_group_error(config_name, parts[0], override)
            if foreign:
                return foreign
        if parts[0] == "hydra" or (group and len(parts) == 1) or OmegaConf.select(base, key, default=absent) is not absent:
            continue
        parent_key = ".".join(parts[:-1])
        parent = OmegaConf.select(base, parent_key, default=None) if parent_key else base
        if group and len(parts) == 2 and not parent:
            files = sorted(p for p in (Path(CONF_DIR) / parts[0]).glob("*.yaml") if p.stem not in ("none", "default"))
            having = [p.stem for p in files if re.search(rf"^{re.escape(parts[1])}:", p.read_text(), re.M)]
            options = having or [p.stem for p in files]
            example = f"e.g. {parts[0]}={options[0]} " if options else ""
            return f"{key}: a setting of the {parts[0]} group, which is off here; select one of its options first, {example}{override.lstrip('+')}"
        if not isinstance(parent, DictConfig) or "_target_" in parent or parent_key in OPEN_SETTINGS:
            continue
        settings = OmegaConf.to_container(parent, resolve=False)
        if settings and all(isinstance(v, dict) and "_target_" in v for v in settings.values()):
            continue  # a collection of objects: a new one may be added
        known = [k for k in settings if not str(k).startswith("_")]
        close = difflib.get_close_matches(parts[-1], known, 1)
        hint = f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""
        return f"{key}: unknown setting; {parent_key or config_name + '.yaml'} has {', '.join(known)}{hint}"
    return None


def hydra_error_line(config_name: str, err: Exception, argv: list[str] = ()) -> str:
    """One line for an error Hydra raised composing ``config_name``: its report spans lines and ends with the
    config search path (a group option that does not exist lists the available ones over several lines)."""
    import re

    null_group = null_group_error(config_name, argv)
    if null_group:
        return null_group
    message = " ".join(str(err).split())
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        hint = retriever_setting_error(key, argv) if config_name == "evaluate" and key.startswith("retriever.") else None
        # another command's group (train.py retriever=bm25: + would add it unread), or a setting of a group this config
        # has not (index.py trainer.x=1: its + form is refused too)
        if not hint and ("." not in key or key.split(".")[0] not in compose(config_name, [])):
            hint = foreign_group_error(config_name, key.split(".")[0], next((a.lstrip("+") for a in argv if a.lstrip("+").split("=", 1)[0] == key), key))
        if not hint and key.count(".") == 1:  # loss.margin with loss=infonce: + would add a key the loss refuses
            hint = group_option_setting_error(config_name, key, argv)
        return hint or f"{key}: no such setting in {config_name}.yaml with the options chosen (a new key is added with +{key}=...)"
    twice = re.match(r"Multiple values for ([\w.@/]+)\. To override a value use 'override \1: ([^']*)'", message)
    if twice:  # +group=option for a group the config already has: Hydra's words speak of a defaults list
        group, option = twice.groups()
        return f"+{group}={option}: {config_name}.yaml already has the {group} group; select the option without +: {group}={option}"
    missing = re.match(r"In '[^']+': Could not load '([\w.@-]+)/([^'/]+)'\.", message)
    if missing and (Path(CONF_DIR) / missing.group(1)).is_dir() and not (Path(CONF_DIR) / missing.group(1) / f"{missing.group(2)}.yaml").is_file():
        # a misspelled option in a list (retriever=[bm25,bm26]): Hydra says "Could not load" without the options it
        # lists for a single one (retriever=bm26)
        group, option = missing.groups()
        options = " ".join(group_options(group))
        return f"In '{config_name}': Could not find '{group}/{option}' Available options in '{group}': {options}"
    present = re.match(r"Could not append to config. An item is already at '([^']+)'", message)
    if present:  # e.g. +encoder.packing=packed from a run made before the config had the key
        key = present.group(1)
        return f"+{key}: {key} is already a setting of {config_name}.yaml here; drop the + ({key}=...), or write ++{key}=... to set it whether or not it exists"
    return message.split(" Config search path:")[0]


def null_group_error(config_name: str, argv: list[str]) -> str | None:
    """The one line for a config group set to null (``smooth=null``, ``scheduler=[null]``), which Hydra refuses
    with "Config group override must be a string or a list. Got NoneType" or fails inside on (a TypeError): a
    group takes one of its options' names. None when no override does that."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # a line Hydra cannot parse: its own message says where
        return None
    for override in overrides:
        group = override.key_or_group
        if override.is_delete() or override.is_sweep_override() or not (Path(CONF_DIR) / group).is_dir():
            continue
        value = override.value()
        if value is not None and not (isinstance(value, list) and None in value):
            continue
        options = group_options(group)
        try:
            off = group not in compose(config_name, [])
        except Exception:
            off = False
        rest = f"; {group} is off unless an option is selected, so leave it out for none" if off else ""
        return f"{override.input_line}: {group} is a config group; give one of its options: {', '.join(options)}{rest}"
    return None


def group_option_setting_error(config_name: str, key: str, argv: list[str]) -> str | None:
    """For ``GROUP.SETTING=...`` that the chosen option of one of the command's groups lacks but other options have
    (``train.py loss.margin=0.3`` with the default loss=infonce; Hydra's hint, to add it with +, led to "InfoNCELoss
    takes no such setting"): one line naming the options that have it. None otherwise (Hydra's own line is kept)."""
    group, setting = key.split(".", 1)
    if group not in COMMAND_GROUPS.get(config_name, ()) or not (Path(CONF_DIR) / group).is_dir():
        return None
    rest = [a for a in argv if a.lstrip("+").split("=", 1)[0] not in (key, group)]
    try:
        chosen = compose(config_name, [a for a in argv if a.lstrip("+").split("=", 1)[0] != key], return_hydra_config=True).hydra.runtime.choices.get(group)
    except Exception:
        return None
    having = []
    for option in group_options(group):
        try:
            node = compose(config_name, [*rest, f"{group}={option}"]).get(group)
        except Exception:
            continue
        if node is not None and setting in node:
            having.append(option)
    if not having:
        return None
    override = next((a.lstrip("+") for a in argv if a.lstrip("+").startswith(key + "=")), key + "=...")
    return f"{key}: not a setting of {group}={chosen}; {' and '.join(f'{group}={o}' for o in having)} {'has' if len(having) == 1 else 'have'} it: select one first, e.g. {group}={having[0]} {override}"


def retriever_setting_error(key: str, argv: list[str]) -> str | None:
    """For evaluate's ``retriever.NAME.SETTING=...`` that Hydra cannot override: the retriever is selected and has
    no such setting (one line listing its settings), or it is not selected and an option of the retriever group
    gives it with that setting (one line saying to select it); None otherwise (Hydra's own line is kept)."""
    parts = key.split(".")
    if len(parts) < 3:
        return None
    name, setting = parts[1], parts[2]
    rest = [a for a in argv if not a.lstrip("+").startswith(f"retriever.{name}.")]
    try:
        selected = compose("evaluate", rest).retriever
    except Exception:
        return None
    if name in selected:
        return unknown_setting(f"retriever.{name}", setting, [k for k in selected[name] if k not in ("_target_", "parts")])
    for option in group_options("retriever"):
        try:
            given = compose("evaluate", [f"retriever=[{option}]"]).retriever
        except Exception:
            continue
        if name in given and setting in given[name]:
            override = next((a.lstrip("+") for a in argv if a.lstrip("+").startswith(key + "=")), key + "=...")
            return f"{key}: a setting of retriever {name}, which is not selected; select it first, e.g. \"retriever=[{option}]\" {override}"
    return None


def run_dir_error(cfg) -> str | None:
    """The one line for a run folder (``hydra.run.dir``) this user cannot create, e.g. ``outputs/`` under a
    working directory owned by another user (a container's /work mounted from the host as root): Hydra
    would fail creating it with a traceback. None when it can be created (or is not known)."""
    from omegaconf import OmegaConf

    try:
        run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=False)
    except Exception:  # an interpolation only Hydra's run resolves: left to Hydra
        return None
    if not run_dir:
        return None
    folder = Path(str(run_dir)).expanduser().absolute()
    if (folder / "manifest.json").is_file():  # index.MANIFEST (cli may not import retrieval's FAISS here)
        return (f"hydra.run.dir={run_dir} is an index folder: the run's log written there would leave it unloadable (search.py and "
                "serve.py refuse a folder holding files its manifest does not name); set hydra.run.dir to another folder")
    existing = nearest_existing(folder)  # a broken symbolic link is in the way: Hydra's mkdir failed with a traceback
    if existing is None or (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
        return None
    what = not_a_folder(existing) if not os.path.isdir(existing) else unwritable_reason(existing)
    return f"hydra.run.dir={run_dir}: {existing} is {what}; run from a folder you can write, or set hydra.run.dir=..."


def unwritable_reason(folder: Path) -> str:
    """Why ``folder``, which ``os.access`` says takes no files, takes none: it is on a filesystem mounted read-only
    (no user writes there; it was said to be "not writable by this user", also to root), or its modes refuse this user."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "on a read-only filesystem"
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "?"
    return f"not writable by this user (uid {uid})"


def hydra_command(config_name: str):
    """``@hydra.main`` over the packaged ``config_name``, and before it runs ``composition_error``'s check:
    bad overrides are one ``error:`` line and exit status 2, not Hydra's multi-line report and exit 1."""
    import hydra

    from two_tower.cli import startup

    def wrap(task):
        from_command_line = []

        @functools.wraps(task)
        def task_from_command_line(cfg):
            if from_command_line:  # once its overrides passed their check: a refusal or --help stays quick
                startup.skip_torchmetrics_transformers()
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(task_from_command_line)

        @functools.wraps(task)
        def main(*args):
            if not args:  # the command line (a passed cfg goes straight to the task)
                from_command_line.append(True)
            try:
                if not args and not debugging():
                    message = composition_error(config_name, sys.argv[1:])
                    if message:
                        sys.exit(report(TwoTowerError(message)))
                return hydra_main(*args)
            except KeyboardInterrupt:  # outside the task's exit_on_error (the overrides' check, Hydra's set-up, the task's imports): it was a traceback
                sys.exit(interrupted_status())
            except BrokenPipeError:  # `--help | head`: Hydra's print of the help text; stop quietly, as a pipeline's writer
                drop_stdout()
                sys.exit(141)
            finally:
                from_command_line.clear()

        return main

    return wrap


def group_override_error(overrides: list[str], groups: dict[str, list[str]]) -> str | None:
    """One line for a setting inside a config group (``prf.depth=3``, ``rerank.weight=0.3``) that Hydra would
    refuse with a hint that leads elsewhere: the group is not selected (``rerank=maxsim`` missing), or the key is
    not one of the group's settings (``groups``: group -> its settings). None when every such setting is fine."""
    selected = {o.lstrip("+").split("=", 1)[0] for o in overrides if "=" in o}
    for override in overrides:
        name = override.lstrip("+").split("=", 1)[0]
        group, _, key = name.partition(".")
        if group not in groups or not key:
            continue
        if group not in selected:
            options = group_options(group)
            return f"{name}: a setting of the {group} group, which is off; select it first, e.g. {group}={options[0] if options else '...'} {override.lstrip('+')}"
        if key.split(".")[0] not in groups[group]:
            return unknown_setting(group, key, groups[group])
    return None


def unknown_settings_error(config_name: str, overrides: list[str], groups) -> str | None:
    """One line for overrides of ``config_name`` (search, serve) that name no setting: a key the config does
    not have (``bogus=1``, ``+bogus=1``, which Hydra would add and the command ignore), a key inside a plain
    setting (``k.x=1``), or a removal (``~k``). ``groups``: config groups, whose inner keys
    ``group_override_error`` checks. None when every override names a setting."""
    known = command_settings(config_name)
    for override in overrides:
        name = override.split("=", 1)[0]
        if name.startswith("~"):
            return f"{name}: settings cannot be removed; set {name[1:]}= to another value"
        top = name.lstrip("+").split(".")[0]
        if top not in known or ("." in name and top not in groups):
            return f"{name.lstrip('+')}: unknown setting; the settings are {', '.join(known)}"
    return None


@functools.lru_cache(maxsize=None)
def command_settings(config_name: str) -> tuple[str, ...]:
    """The settings search.py's or serve.py's config (``config_name``) has, then its config groups (prf,
    rerank): what an override may name. Composed once a process (the packaged config does not change)."""
    return (*compose(config_name, []), *command_group_settings(config_name))


def search_override_error(config_name: str, overrides: list[str]) -> str | None:
    """search.py's and serve.py's check of their overrides before composing: the one line for a setting of
    an unselected group or unknown to it (``group_override_error``), or for a setting the config does not
    have (``unknown_settings_error``); None when every override names a setting."""
    groups = command_group_settings(config_name)
    if any(o.lstrip("+~").split("=", 1)[0].split(".")[0] == "smooth" for o in overrides):
        return ("smooth: neighbour smoothing is chosen when a folder is built (index.py ... smooth=neighbours); a folder "
                "built so searches with it (its manifest.json and serve's /health, index.ranking.smooth, say so)")
    return group_override_error(overrides, groups) or unknown_settings_error(config_name, overrides, tuple(groups))


def compose_search_config(config_name: str, overrides: list[str]):
    """search.py's and serve.py's config: (the composed config, None), or (None, the one error line) for an override
    that names no setting (``search_override_error``) or that Hydra refuses (an unknown key, a bad value, a group
    option that does not exist: ``hydra_error_line``)."""
    message = search_override_error(config_name, overrides)
    if message:
        return None, message
    try:
        return compose(config_name, overrides), None
    except Exception as err:  # Hydra's own errors
        return None, hydra_error_line(config_name, err, overrides)


def command_group_settings(config_name: str) -> dict[str, list[str]]:
    """The settings of a command's config groups: search.py's and serve.py's prf=rocchio and rerank=maxsim,
    index.py's smooth=neighbours; {} for the others. Read from the groups' files in conf/ (``group_settings``): their
    settings dataclasses (RocchioPRF, MaxSimRerank, NeighbourSmoothing) name the same keys, which
    tests/test_configs.py checks, but importing them imports torch, faiss, bm25s and datasets, most of the 4 s a
    refusal of a bad override took."""
    if config_name not in ("search", "serve", "index"):
        return {}
    return {group: group_settings(group) for group in COMMAND_GROUPS[config_name]}


def group_settings(group: str) -> list[str]:
    """The settings of config group ``group`` (a folder of conf/): the keys of its options' files, in their order."""
    from omegaconf import OmegaConf

    keys: dict[str, None] = {}
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        keys.update(dict.fromkeys(OmegaConf.load(path)))
    return list(keys)
