"""mtl_train.data.files: unreadable Parquet files fail naming the file and column."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl_train.errors import DataError


def test_corrupt_missing_and_incomplete_parquet_files_fail_naming_file_and_column(tmp_path):
    from mtl_train.data.files import read_parquet

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": list(range(1000)), "b": [1.0] * 1000}), good)
    assert read_parquet(str(good), ["a"]).num_rows == 1000
    with pytest.raises(DataError, match=r"good.parquet: missing column 'c'"):
        read_parquet(str(good), ["a", "c"])
    with pytest.raises(DataError, match="data file not found: .*nope.parquet"):
        read_parquet(str(tmp_path / "nope.parquet"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match="garbage.parquet: not a readable Parquet file"):
        read_parquet(str(garbage))
    data = good.read_bytes()
    cut = tmp_path / "truncated.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.parquet"):
        read_parquet(str(cut))
    damaged = tmp_path / "damaged.parquet"  # footer intact, column pages overwritten
    damaged.write_bytes(data[:4] + b"\xff" * (len(data) // 2 - 4) + data[len(data) // 2:])
    with pytest.raises(DataError, match="damaged.parquet"):
        read_parquet(str(damaged))
