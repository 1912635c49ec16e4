"""The prepare-step cache: derived files (Parquet conversions, vocabularies, statistics) are
stored under a key that changes whenever the data or the schema changes, and reused otherwise.

Key = sha256 of (each input file's absolute path, size and mtime in ns) + the JSON of the
schema/config that shaped the output + a format version. Files are written atomically
(temporary name, then rename), so an interrupted prepare never leaves a half file that a
later run would trust.

Location: ``dataset.cache_dir`` when set; otherwise a ``.mtl_cache`` folder in the folder that
holds all the input files (for a glob over partition folders, their parent) when that folder is
writable (has a write bit); otherwise ``$MTL_TRAIN_CACHE`` or ``~/.cache/mtl-train``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from mtl_train.errors import DataError
from mtl_train.io import write_atomic

FORMAT_VERSION = 1


def fingerprint(paths: list[str], spec: dict | None = None) -> str:
    """A 16-hex-digit key of the input files (path, size, mtime) and ``spec``.

    Raises:
        DataError: an input file does not exist.
    """
    h = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for p in sorted(os.path.abspath(p) for p in paths):
        try:
            st = os.stat(p)
        except OSError:
            raise DataError(f"data file not found: {p}") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(spec or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tail_digest(path: str, nbytes: int = 1 << 16) -> str:
    """SHA-256 (16 hex digits) of the end of ``path``: for a Parquet file its whole footer
    (schema, row-group offsets and sizes, column statistics; its length is in the file's last 8
    bytes), else the last ``nbytes`` bytes; so that a file rewritten with the same size and
    modification time (``cp -p``, ``rsync -a``, coarse file-system clocks) still gets a new key.

    Raises:
        DataError: the file cannot be read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 8))
            end = f.read(8)
            n = nbytes
            if len(end) == 8 and end[4:] == b"PAR1":
                n = min(size, int.from_bytes(end[:4], "little") + 8)
            f.seek(max(0, size - n))
            return hashlib.sha256(f.read(n)).hexdigest()[:16]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _writable(folder: Path) -> bool:
    """True when ``folder`` may be written: it grants some write bit and this process may
    write it. (A folder with no write bit at all, like a read-only shared data folder, counts
    as read-only even for root, whom os.access alone would let through.)"""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK)


def cache_root(data_paths: list[str], cache_dir: str | None = None) -> Path:
    """The folder that holds cached prepare outputs for ``data_paths`` (created if needed)."""
    if cache_dir:
        root = Path(cache_dir)
    else:
        paths = [Path(os.path.abspath(p)) for p in data_paths] or [Path.cwd()]
        dirs = [str(p if p.is_dir() else p.parent) for p in paths]
        # the folder that holds all the files (logs/ for logs/day=*/part-*.parquet, not a
        # partition folder), unless that is the filesystem root; then the first file's folder
        common = Path(os.path.commonpath(dirs))
        parents = [d for d in dict.fromkeys([common, Path(dirs[0])]) if d.parent != d]
        # a .mtl_cache that exists must itself be writable (another user's, on a shared folder)
        usable = [d for d in parents if _writable(d / ".mtl_cache" if (d / ".mtl_cache").is_dir() else d)]
        if usable:
            root = usable[0] / ".mtl_cache"
        else:
            root = Path(os.environ.get("MTL_TRAIN_CACHE", Path.home() / ".cache" / "mtl-train"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached_file(path: Path, build: Callable[[str], None]) -> Path:
    """Return ``path``, building it first with ``build(tmp_path)`` if it does not exist yet.

    ``build`` writes to the temporary path it is given; the file is then renamed into place,
    so a concurrent or interrupted build never exposes a partial file.
    """
    if not path.exists():
        write_atomic(build, str(path))
    return path
