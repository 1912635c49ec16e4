"""Files written atomically: a reader never sees a partial file, an interrupted write leaves
the old file as it was. Used by the prepare cache, checkpoints and eval/predict outputs."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_atomic(write: Callable[[str], None], path: str, durable: bool = False) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over
    ``path``, so that a reader never sees a partial file; on any error the temporary file is
    removed and ``path`` is left as it was.

    The file gets the mode a plain ``open(path, "w")`` would give it (0o666 less the umask;
    ``tempfile.mkstemp`` makes 0600 files, which the rename would carry over to checkpoints and
    predictions that other users of the machine can otherwise read); where the file system
    refuses the chmod, it keeps 0600. ``durable``: fsync the file before the rename and the
    folder after it (the rename survives a power loss)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
        except OSError:
            pass
        os.close(fd)
        fd = -1
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def _first_missing(path: str) -> tuple[str | None, str]:
    """(the shallowest missing component of ``path`` or None where all of it exists, the deepest
    existing ancestor)."""
    missing, cur = None, path
    while not os.path.lexists(cur):
        missing, parent = cur, os.path.dirname(cur)
        if parent == cur:  # pragma: no cover - a root that does not exist
            break
        cur = parent
    return missing, cur


def creatable_dir_problem(path: str) -> str | None:
    """Why the directory ``path`` cannot be created or written (a reason for a message), or None
    where it exists as a writable directory or can be created. Nothing is left behind: where
    part of ``path`` is missing, its shallowest missing folder is created and removed again,
    which finds what a permission check alone would not (root on a read-only mount, ``/proc``)."""
    path = os.path.abspath(os.path.expanduser(path))
    missing, existing = _first_missing(path)
    if not os.path.isdir(existing):
        return f"'{existing}' is a file, not a directory"
    if missing is None:
        return None if os.access(path, os.W_OK | os.X_OK) else "permission denied"
    try:
        os.mkdir(missing)
    except FileExistsError:  # created meanwhile by another process
        return None
    except OSError as e:
        return e.strerror.lower() if e.strerror else str(e)
    try:
        os.rmdir(missing)
    except OSError:  # pragma: no cover - filled meanwhile by another process
        pass
    return None


def ensure_writable_dir(key: str, path: str, create: bool = False) -> str:
    """Check, before any work, that the output directory ``path`` given by config key ``key``
    (``hydra.run.dir``, ``hydra.sweep.dir``, the folder of ``infer.output``, an export's
    output, ...) can be created and written; with ``create``, create it.

    Returns:
        ``path``, absolute, ``~`` expanded.

    Raises:
        ConfigError: ``<key>: cannot create '<path>': <reason>`` (one line; the CLI exits 2).
    """
    from mtl_train.errors import ConfigError

    full = os.path.abspath(os.path.expanduser(path))
    why = creatable_dir_problem(full)
    if why is None and create:
        try:
            os.makedirs(full, exist_ok=True)
        except OSError as e:
            why = e.strerror.lower() if e.strerror else str(e)
    if why is not None:
        raise ConfigError(f"{key}: cannot create '{full}': {why}")
    return full
