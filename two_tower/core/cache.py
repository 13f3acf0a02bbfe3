"""One content-keyed cache for everything derived from inputs: tokenized splits, mined negatives, teacher
vectors, word2vec vectors.

An entry is a folder ``ROOT/KIND/KEY`` where ``KEY`` is a hash of everything the content depends on.
It is built in a temporary folder beside it and renamed into place (``two_tower.core.atomic``), so an entry
is whole or absent after a kill at any instant; a concurrent job that built the same entry first wins
and ours is discarded. Temporary folders of killed writers are swept when a cache is opened.

```python
cache = ContentCache(cache_dir, "negatives")
key = cache.key(["bm25", fingerprint, settings])
entry = cache.get(key)                  # the folder, or None (cache.read(key, reader): reader(folder), or None)
if entry is None:
    with cache.put(key) as tmp:         # write files into tmp
        np.savez(tmp / "pool.npz", ...)
    entry = cache.path(key)
```
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

from two_tower.core.atomic import atomic_folder, check_writable, discard, sweep_stale_temps
from two_tower.core.errors import NotWritableError

log = logging.getLogger(__name__)


def default_root() -> str:
    """Where caches go when no folder is given: ``$TWO_TOWER_CACHE``, else ``~/.cache/two_tower``.

    The one statement of that default: conf/paths/default.yaml reads it as ``${two_tower_cache:}``, and
    code that must find a cache without a config (a vocabulary's extension loaded again at search time)
    calls it."""
    return os.environ.get("TWO_TOWER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "two_tower")


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("two_tower_cache"):
        OmegaConf.register_new_resolver("two_tower_cache", default_root)


_register_resolver()


def check_cache_root(root: str | os.PathLike, what: str, min_free_bytes: int = 0) -> None:
    """Before any work: the cache folder must take new entries (NotWritableError naming ``what`` if not),
    unless it exists and refuses writes, e.g. a shared cache mounted read-only: then its entries are read
    (a warning says so) and the first one missing is one error naming its folder, since every cache checks
    before it builds."""
    root = Path(root).expanduser()
    try:
        check_writable(root, what, min_free_bytes)
    except NotWritableError as err:
        refused = isinstance(err.__cause__, OSError) and err.__cause__.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        if not (refused and root.is_dir() and os.access(root, os.R_OK | os.X_OK)):
            raise  # a full disk, a file in the path: refused, not read-only
        log.warning("%s: reading its entries only (an entry it lacks cannot be built)", err)


def content_digest(files: list[Path], root: Path | None = None, block: int = 1 << 22) -> str:
    """A hash of the files' names (their paths below ``root``, when given) and bytes, 16 hex digits: what an input
    made of files is keyed by (a local split's shards, a checkpoint, a teacher model's folder; ~1 s a GB). Bytes,
    not sizes and times: a file rewritten with its old times (cp -p, touch -r, rsync -a) is other content (probes)."""
    digest = hashlib.blake2b(digest_size=8)
    for f in files:
        name = Path(f).relative_to(root).as_posix() if root is not None else Path(f).name
        digest.update(name.encode() + b"\0")
        with open(f, "rb") as handle:
            while chunk := handle.read(block):
                digest.update(chunk)
    return digest.hexdigest()


# Beside an entry's files: {relative path: size in bytes} of every file it was written with.
FILES = ".files.json"


def record_files(folder: Path) -> None:
    """Write ``folder``'s ``FILES`` list (called on the finished temporary folder, before its rename)."""
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != FILES}
    (folder / FILES).write_text(json.dumps(sizes, sort_keys=True))


def entry_damage(folder: Path) -> str | None:
    """What is wrong with an entry whose files no longer match its ``FILES`` list, or None (also for entries
    written before the list existed, which are trusted as before)."""
    listing = folder / FILES
    if not listing.is_file():
        return None
    try:
        sizes = json.loads(listing.read_text())
    except (OSError, ValueError) as err:
        return f"{FILES} unreadable: {type(err).__name__}"
    for name, size in sizes.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, written with {size}"
    return None


# What reading an entry's files raises when their bytes are not what was written (numpy, zipfile, json, pickle).
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class ContentCache:
    def __init__(self, root: str | os.PathLike, kind: str):
        self.folder = Path(root).expanduser() / kind
        self.kind = kind
        self._swept = False

    @staticmethod
    def key(spec, length: int = 20) -> str:
        """A stable hash of a JSON-able description of the inputs (``default=str`` for anything else)."""
        return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:length]

    def path(self, key: str) -> Path:
        return self.folder / key

    def get(self, key: str) -> Path | None:
        """The entry's folder if it exists and is whole: entries appear by one rename, and every file the
        entry was written with is still there at its size (its ``FILES`` list). A damaged entry (a file
        deleted or truncated since) is set aside, logged, and reported absent, so the caller builds it again."""
        path = self.path(key)
        if not path.is_dir():
            return None
        damage = entry_damage(path)
        if damage is None:
            return path
        log.warning("cache entry %s is damaged (%s): building it again", path, damage)
        with contextlib.suppress(OSError):  # another process may have set it aside first
            discard(path)
        return None

    def read(self, key: str, reader):
        """``reader(entry folder)`` for a whole entry (``get``), or None when it is absent, damaged or unreadable:
        a file overwritten with other bytes of its size (a bad zip, a bad ``.npy`` header) passes ``get``'s size
        check, and ``reader`` raising one of the errors of reading bad bytes sets the entry aside with a warning,
        as ``get`` does a damaged one, so the caller builds it again (it was a traceback)."""
        path = self.get(key)
        if path is None:
            return None
        try:
            return reader(path)
        except UNREADABLE as err:
            log.warning("cache entry %s is unreadable (%s: %s): building it again", path, type(err).__name__, err)
            with contextlib.suppress(OSError):  # another process may have set it aside first
                discard(path)
            return None

    def check_writable(self, min_free_bytes: int = 0) -> None:
        """Fail now, naming the cache folder, if an entry could not be written in it."""
        check_writable(self.folder, f"cache folder ({self.kind})", min_free_bytes)

    @contextlib.contextmanager
    def put(self, key: str):
        """Yield a temporary folder to fill; on success it becomes the entry. If another process put the
        same entry meanwhile, that one is kept (same inputs, same content) and ours is dropped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            sweep_stale_temps(self.folder)
            self._swept = True
        try:
            with atomic_folder(self.path(key), replace=False) as tmp:
                yield tmp
                record_files(tmp)
        except FileExistsError as err:
            if err.filename != str(self.path(key)):
                raise
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise NotWritableError(f"cache folder ({self.kind}) {self.folder}: no space left on the device while writing an entry; free some, or set TWO_TOWER_CACHE / paths.cache_dir to another disk") from err
