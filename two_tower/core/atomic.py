"""Files and folders that are whole or absent after a kill at any instant, on any filesystem layout.

Everything is written to a temporary name **in the destination folder** (so the final ``os.replace`` is
a rename on one filesystem, never a copy), flushed to disk, then renamed into place. A temporary name is
``.<name>.tmp-<host>-<pid>-<random>``: on failure it is removed at once; after a kill it is removed by
``sweep_stale_temps`` on a later start, but only when its writer is gone (same host, pid no longer
running), so jobs of a multirun sharing a folder never delete each other's work in progress.

Imports nothing of the project's but its error base class (bottom layer).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from two_tower.core.errors import NotWritableError

log = logging.getLogger(__name__)

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _find_renameat2():
    try:
        # the process's own symbols, C library included (find_library("c") ran ldconfig in a subprocess at import)
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_renameat2 = _find_renameat2()


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (same folder, hence same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(path: str | os.PathLike) -> bool:
    """Remove a file or folder in one step as others see it: one rename to a temporary name beside it (a reader
    finds it whole or gone; a kill leaves a temp that ``sweep_stale_temps`` removes), then the deletion.
    False if it was already gone."""
    path = Path(path)
    aside = temp_path(path)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    _remove(aside)
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose writer (same host) no longer runs;
    returns what was removed. Temps of running processes and of other hosts are left alone."""
    folder, removed = Path(folder), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _TEMP.match(entry.name)
        if found is None or found["host"] != _HOST:
            continue
        pid = int(found["pid"])
        if pid == os.getpid() or _pid_running(pid):
            continue
        _remove(entry)
        removed.append(entry)
    if removed:
        log.info("Removed %d temporary file(s) left by killed runs in %s", len(removed), folder)
    return removed


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems refuse a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(dirpath)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """``with atomic_write(p) as f: f.write(...)``: ``p`` holds the old content or the whole new one,
    never a part. The temp file is beside ``p``; it is removed if the block raises."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False):
    """``with atomic_folder(dest) as tmp: write files into tmp``; on success ``tmp`` becomes ``dest``.

    ``replace=False``: if ``dest`` appears meanwhile (another process wrote the same thing), ours is
    discarded and ``FileExistsError`` is raised; the caller decides whether that is fine. The commit
    (existence check + rename) holds an exclusive lock on the parent folder, so two writers of the same
    ``dest`` cannot both succeed. ``replace=True`` swaps the old folder out and the new one in (``_swap_in``):
    where the system exchanges them in one call, ``dest`` names the old folder or the new one at every instant;
    elsewhere it is missing between two renames, and an interruption between them puts the old one back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        with folder_lock(path.parent):
            if path.exists():
                if not replace:
                    raise FileExistsError(errno.EEXIST, "already exists", str(path))
                _swap_in(tmp, path)
            else:
                os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one system call (Linux ``renameat2(RENAME_EXCHANGE)``); False where the call
    or the filesystem does not offer it (other systems, old kernels or C libraries, some network filesystems, a seccomp
    filter that refuses it)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # EPERM: a seccomp filter that does not know the call (older container runtimes' default profiles, some sandboxes)
    # refuses it so; a real permission refusal is then raised by the renames themselves, as before
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path`` in place of the folder there, and remove the old one. One atomic
    exchange where the system has it; elsewhere two renames, and an interruption between them (Ctrl-C, an
    error) puts the old folder back, so ``path`` is never left missing with the old content under a temp name
    (which ``sweep_stale_temps`` would later delete)."""
    if _exchange(new, path):
        _remove(new)  # now the old folder
        return
    old = temp_path(path)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if not os.path.lexists(path):
            os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike):
    """An exclusive ``flock`` on a folder itself (no lock file to leave behind; released if the holder dies)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def nearest_existing(path: str | os.PathLike) -> Path | None:
    """``path``, or its nearest parent that is there: where a folder not made yet would be made (None: none is, as for
    a relative path under a working directory that is gone).

    A symbolic link that resolves to nothing (its target gone, or a loop) counts as there, and as not a folder
    (``os.path.isdir`` is False for it): it holds its name, so no folder can be made there or under it (``mkdir``
    says 'File exists', or 'No such file or directory' below it). Callers refuse it as ``not_a_folder`` words it.
    Counted as absent (``Path.exists`` follows links), the check passed a run folder under one, and Hydra's
    ``mkdir`` failed with a traceback. os.path's tests, not Path's: ``Path.exists`` raises PermissionError where a
    parent cannot be searched (a review), ``os.path.lexists`` says False, so that parent is the one found."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), None)


def not_a_folder(path: str | os.PathLike) -> str:
    """What ``path``, which is there and is not a folder (``nearest_existing``), is, for a refusal: "a file, not a
    folder", or for a symbolic link that resolves to nothing "a broken symbolic link (to TARGET), not a folder"."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a broken symbolic link (to {target}), not a folder"
    return "a file, not a folder"


def not_a_file(path: str | os.PathLike) -> str | None:
    """What stands at ``path`` where a file to read should be, for a refusal ("no such file" misled of both): "a
    folder, not a file", or for a symbolic link that resolves to nothing "a link to nothing (TARGET)"; None otherwise."""
    path = Path(path)
    if path.is_dir():
        return "a folder, not a file"
    if path.is_symlink() and not path.exists():
        return f"a link to nothing ({os.readlink(path)})"
    return None


def check_writable(folder: str | os.PathLike, what: str, min_free_bytes: int = 0) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it and that it has
    ``min_free_bytes`` free; raises NotWritableError naming ``what`` (e.g. ``paths.output_dir=...``)."""
    folder = Path(folder).expanduser()
    existing = nearest_existing(folder)  # every parent of a folder is a folder: only this one can be in the way
    if existing is not None and not os.path.isdir(existing):  # said "cannot write in DIR (File exists)" (a probe)
        raise NotWritableError(f"{what}: {existing} is {not_a_folder(existing)}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise NotWritableError(f"{what}: cannot write in {folder} ({err.strerror or err})") from err
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise NotWritableError(f"{what}: only {free / 2**20:.0f} MB free in {folder}, need at least {min_free_bytes / 2**20:.0f} MB")
    return folder
