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
