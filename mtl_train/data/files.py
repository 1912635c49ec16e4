"""Opening data files with one-line errors: every pyarrow/OS failure becomes a
:class:`~mtl_train.errors.DataError` that names the file (and the column, where one is missing).

Use these wherever a data file is opened, so that a missing, unreadable or corrupt file fails
before the first training step with a message a person can act on.
"""
from __future__ import annotations

import contextlib
import os

import pyarrow as pa

from mtl_train.errors import DataError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_readable(path: str, key: str | None = None) -> str:
    """Return the absolute ``path`` after checking that it is an existing, readable file.

    Raises:
        DataError: missing, a directory, or not readable (naming the path, and the config
            key ``key`` when given)."""
    p = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(p):
        raise DataError(f"{key + ': ' if key else ''}data file not found: {p}")
    if os.path.isdir(p):
        raise DataError(f"{p}: is a directory, expected a data file")
    if not os.access(p, os.R_OK):
        raise DataError(f"{p}: not readable (permission denied)")
    return p


def parquet_file(path: str):
    """Open ``path`` as a ``pyarrow.parquet.ParquetFile`` (footer and schema read and checked).

    Raises:
        DataError: missing, unreadable, or not a valid Parquet file (naming the path)."""
    import pyarrow.parquet as pq

    p = check_readable(path)
    try:
        return pq.ParquetFile(p)
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({_first_line(e)})") from None


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole Parquet file (only ``columns`` when given).

    Raises:
        DataError: missing or corrupt file (pages are decoded here, so a damaged column chunk
            is caught too), or a requested column that the file does not have."""
    f = parquet_file(path)
    if columns is not None:
        require_columns(f.schema_arrow.names, columns, f"{os.path.abspath(path)}")
    try:
        return f.read(columns=columns)
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise DataError(f"{os.path.abspath(path)}: corrupt Parquet data ({_first_line(e)})") from None


def require_columns(have: list[str], needed: list[str], source: str, what: str = "column") -> None:
    """Raise DataError naming ``source``, the first column of ``needed`` not in ``have`` and the
    first columns that are there."""
    have = list(have)
    have_set = set(have)
    missing = [c for c in needed if c not in have_set]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        there = f"{have[:8]}{'...' if len(have) > 8 else ''}"
        raise DataError(f"{source}: missing {what} '{missing[0]}'{more}; have {there}")


@contextlib.contextmanager
def in_file(path: str):
    """Prefix a DataError raised while reading ``path`` with the file's path (in a directory or
    glob of many files: which one holds the bad value)."""
    try:
        yield
    except DataError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise DataError(f"{path}: {e}") from None
