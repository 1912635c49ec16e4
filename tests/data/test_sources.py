"""mtl_train.data.sources: seeded permutation splits."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl_train.data.sources import permuted_sources, split_indices


def test_permuted_sources_are_the_seeded_split_in_file_order(tmp_path):
    n = 1000
    tbl = pa.table({"i": np.arange(n), "y": np.zeros(n)})
    f = tmp_path / "t.parquet"
    pq.write_table(tbl, f, row_group_size=128)
    src = permuted_sources(str(f), ["i", "y"], {"train": 0.6, "val": 0.2, "test": 0.2}, 7, max_rows=900)
    want = split_indices(900, (0.6, 0.2, 0.2), 7)
    for (name, s), idx in zip(src.items(), want):
        got = np.concatenate([t.column("i").to_numpy() for u in s.units for t in s.tables(u, ["i"])])
        assert name == s.name and got.tolist() == idx.tolist() and sum(s.rows_per_unit()) == len(idx)
    whole = permuted_sources(str(f), ["i"], {"test": 1.0}, 7)["test"]
    assert whole.assigner is None and sum(whole.rows_per_unit()) == n
