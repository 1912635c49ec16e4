"""The one data pipeline: the named datasets' column schemas on the Parquet path (vocabulary
order, exact statistics, permutation splits), the encoder's checks, and the Split interface
shared by in-memory and streamed splits."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_parquet import cfg, write_log

from mtl_train.data import parquet as pqd
from mtl_train.data.datasets.common import column_schema
from mtl_train.data.datasets.common import open_converted as open_named
from mtl_train.data.schema import Split, Table, Task
from mtl_train.data.sources import permuted_sources, split_indices
from mtl_train.data.stream import StreamSplit, train_loader
from mtl_train.errors import ConfigError, DataError


def open_tables(tmp_path, splits: dict, spec):
    """Write each raw table to Parquet and open them as a named dataset would."""
    sources = {}
    for name, tbl in splits.items():
        f = tmp_path / f"{name}.parquet"
        pq.write_table(tbl, f)
        sources.update(permuted_sources(str(f), spec.columns(), {name: 1.0}, 0))
    return open_named("t", spec, sources, tmp_path, 1, "test tables")


# ---- the named datasets' schema on the Parquet path ------------------------------------------
def test_encoder_checks_columns_and_binary_labels(tmp_path):
    tbl = pa.table({"u": ["a", "b", "a", "c"], "x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 1, 0]})
    spec = column_schema(["u"], ["x"], [Task("buy", "y")])
    b = open_tables(tmp_path, {"train": tbl, "val": tbl, "test": tbl}, spec)
    assert b.train.sparse[:, 0].tolist() == [2, 3, 2, 4]  # 'a' most frequent -> id 2
    enc = b.schema.encoders
    with pytest.raises(DataError, match="val split: missing feature column 'x'"):
        enc.transform(tbl.drop(["x"]), "val split")
    with pytest.raises(DataError, match="val split: missing label column 'y'"):
        enc.transform(tbl.drop(["y"]), "val split")
    bad = tbl.set_column(2, "y", pa.array([0, 2, 1, 0]))
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError, match="label column 'y' of binary task 'buy' holds 1 values other than 0/1"):
        open_tables(tmp_path / "bad", {"train": bad, "val": tbl, "test": tbl}, spec)
    (tmp_path / "leak").mkdir()
    leak = column_schema(["u"], ["y"], [Task("buy", "y")])
    with pytest.raises(ConfigError, match="label column 'y' of task 'buy' is also a feature"):
        open_tables(tmp_path / "leak", {"train": tbl, "val": tbl, "test": tbl}, leak)
    # a new file without labels: labels unknown (NaN), an unseen id -> out of vocabulary
    table, rep = enc.transform(pa.table({"u": ["c", "zz"], "x": [0.0, 9.0]}), "new.parquet", labels_required=False)
    assert table.sparse[:, 0].tolist() == [4, 1] and torch.isnan(table.labels).all() and rep["oov_ids"]["u"] == 1


def test_named_schema_gives_frequency_vocabulary_exact_standardisation_and_null_ids(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 3.0, 1000)  # a large mean: the exact statistic is numpy's, not a streamed merge
    u = rng.choice(["a", "b", "c", "d"], 1000, p=[0.1, 0.4, 0.2, 0.3])
    tbl = pa.table({"u": pa.array(u, mask=np.arange(1000) % 97 == 0), "x": pa.array(x, mask=np.arange(1000) % 89 == 0),
                    "y": (rng.random(1000) < 0.5).astype(np.int8)})
    spec = column_schema(["u"], ["x"], [Task("y", "y")])
    b = open_tables(tmp_path, {"train": tbl, "val": tbl.slice(0, 10), "test": tbl.slice(10, 10)}, spec)
    valid = x[np.arange(1000) % 89 != 0]
    st = b.schema.encoders.stats["x"]
    assert (st["mean"], st["std"]) == (float(valid.mean()), float(valid.std()))
    want = ((x - valid.mean()) / valid.std()).astype(np.float32)
    want[np.arange(1000) % 89 == 0] = 0.0  # a null is the training mean
    assert np.array_equal(b.train.dense[:, 0].numpy(), want)
    order = {v: 2 + i for i, v in enumerate(["b", "d", "c", "a"])}  # by decreasing count
    ids = [0 if i % 97 == 0 else order[v] for i, v in enumerate(u)]
    assert b.train.sparse[:, 0].tolist() == ids


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


# ---- the Split interface -----------------------------------------------------------------------
@pytest.fixture
def both(tmp_path):
    write_log(tmp_path / "train.parquet", 500, 0)
    write_log(tmp_path / "val.parquet", 200, 1)
    return pqd.load(cfg(tmp_path, mode="memory"), seed=0), pqd.load(cfg(tmp_path, mode="stream"), seed=0)


def test_memory_and_stream_splits_offer_one_interface(both):
    mem, st = both
    tasks = mem.schema.tasks
    for (name, m), (_, s) in zip(mem.splits(), st.splits()):
        assert isinstance(m, Table) and isinstance(s, StreamSplit)
        assert isinstance(m, Split) and isinstance(s, Split)
        assert (m.kind, s.kind) == ("memory", "stream")
        assert len(m) == len(s)
        assert m.positives(tasks) == s.positives(tasks)  # counted from labels / by the prepare step
        assert m.funnel_violations(tasks) == s.funnel_violations(tasks) == {"purchase": 0}
        mb, sb = list(m.batches(64)), list(s.batches(64))  # every row once, in order, alike
        assert [len(b["labels"]) for b in mb] == [len(b["labels"]) for b in sb]
        for k in ("sparse", "seq", "dense"):
            assert torch.equal(torch.cat([b[k] for b in mb]), torch.cat([b[k] for b in sb])), (name, k)
        assert torch.equal(torch.cat([b["labels"] for b in mb]).isnan(), torch.cat([b["labels"] for b in sb]).isnan())
    assert mem.train.positives(tasks)["click"] == int((mem.train.labels[:, 0] == 1).sum()) > 0


def test_train_loader_is_the_splits_own_loader(both):
    mem, st = both
    for split in (mem.train, st.train):
        loader = train_loader(split, 64, seed=1)
        assert loader.kind == split.kind
        loader.set_epoch(0)
        assert sum(len(b["labels"]) for b in loader) == len(split)
