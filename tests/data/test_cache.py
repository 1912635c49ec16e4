"""mtl_train.data.cache: fingerprints and atomic cached files."""
import os

import pytest

from mtl_train.data.cache import cache_root, cached_file, fingerprint
from mtl_train.errors import DataError


def test_fingerprint_changes_with_data_and_spec(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    k1 = fingerprint([str(f)], {"cols": ["x"]})
    assert k1 == fingerprint([str(f)], {"cols": ["x"]})
    assert k1 != fingerprint([str(f)], {"cols": ["y"]})
    f.write_text("x\n1\n2\n")
    os.utime(f, ns=(1, 2))
    assert fingerprint([str(f)], {"cols": ["x"]}) != k1
    with pytest.raises(DataError, match="missing.csv"):
        fingerprint([str(tmp_path / "missing.csv")])


def test_cached_file_builds_once_and_atomically(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        with open(tmp, "w") as fh:
            fh.write("ok")

    root = cache_root([str(tmp_path / "data.csv")])
    assert root == tmp_path / ".mtl_cache"
    p = cached_file(root / "k.parquet", build)
    assert p.read_text() == "ok" and len(calls) == 1
    cached_file(root / "k.parquet", build)
    assert len(calls) == 1

    def failing(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_file(root / "bad.parquet", failing)
    assert not (root / "bad.parquet").exists()
    assert not [q for q in root.iterdir() if q.name.startswith(".tmp-")]


def test_cache_of_partitioned_files_sits_above_the_partitions(tmp_path, monkeypatch):
    files = [tmp_path / "logs" / f"day={d}" / "part-0.parquet" for d in (1, 2)]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_text("x")
    assert cache_root([str(f) for f in files]) == tmp_path / "logs" / ".mtl_cache"
    assert cache_root([str(files[1])]) == tmp_path / "logs" / "day=2" / ".mtl_cache"  # one file: its folder
    # an existing .mtl_cache that may not be written (another user's): the first file's folder,
    # and where that is locked too, the user cache
    locked = [tmp_path / "logs" / ".mtl_cache", tmp_path / "logs" / "day=1" / ".mtl_cache"]
    locked[0].chmod(0o555)
    try:
        assert cache_root([str(f) for f in files]) == locked[1]
        locked[1].chmod(0o555)
        monkeypatch.setenv("MTL_TRAIN_CACHE", str(tmp_path / "usercache"))
        assert cache_root([str(f) for f in files]) == tmp_path / "usercache"
    finally:
        for d in locked:
            d.chmod(0o755)


def test_read_only_data_folder_is_never_written(tmp_path, monkeypatch):
    data = tmp_path / "shared"
    data.mkdir()
    (data / "d.csv").write_text("x\n1\n")
    data.chmod(0o555)  # no write bit: read-only even for root
    monkeypatch.setenv("MTL_TRAIN_CACHE", str(tmp_path / "usercache"))
    try:
        assert cache_root([str(data / "d.csv")]) == tmp_path / "usercache"
    finally:
        data.chmod(0o755)
