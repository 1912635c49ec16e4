"""mtl_train.data.encode: vocabularies, hashed ids and the encoder's checks."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import BIG, open_tables

from mtl_train.data.datasets.common import column_schema
from mtl_train.data.encode import Vocabulary, hash_ids
from mtl_train.data.schema import Task
from mtl_train.errors import ConfigError, DataError


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


def test_vocabulary_keeps_integer_ids_exact_and_counts_nulls_and_oov():
    v = Vocabulary.fit(pa.array([BIG, BIG, 3, None, BIG + 2]))
    ids, nulls, oov = v.encode(pa.array([BIG + 2, BIG, 3, None, BIG + 1], pa.int64()))
    assert ids.dtype == np.int64
    assert ids.tolist() == [4, 2, 3, 0, 1]  # BIG (2 times) first, then 3 < BIG+2 by value; BIG+1 unseen
    assert (nulls, oov) == (1, 1)
    s = Vocabulary.fit(pa.array(["b", "a", "b"]))
    assert s.encode(pa.chunked_array([["a", None], ["zz", "b"]]))[0].tolist() == [3, 0, 1, 2]


def test_vocabulary_lookup_table_path_misses_values_outside_its_range_and_is_not_pickled():
    import pickle

    # a narrow id range (-3..7) takes the lookup-table path; extreme int64 values must miss,
    # not wrap into the table
    v = Vocabulary.fit(pa.array([5, 5, 7, -3, None, 7, 7], pa.int64()))
    probe = pa.array([7, 5, -3, 2**62, 8, None, -2**63, 2**63 - 1, 4, 6], pa.int64())
    ids, nulls, oov = v.encode(probe)
    assert v._index[0] == "lut"
    assert ids.tolist() == [2, 3, 4, 1, 1, 0, 1, 1, 1, 1]  # 7 (3 times), 5 (2), -3 (1)
    assert (nulls, oov) == (1, 6)
    # a wide range takes the binary search
    w = Vocabulary.fit(pa.array([5, 5, 7, -3, 2**62, 2**62, 2**62, 2**62, None, 7, 7, 7], pa.int64()))
    assert w.encode(probe)[0].tolist() == [2, 4, 5, 3, 1, 0, 1, 1, 1, 1]  # 7 and 2**62 tie (4): by value
    assert w._index[0] == "sorted"
    assert set(pickle.loads(pickle.dumps(v)).__dict__) == {"values"}


def test_hash_ids_are_deterministic_in_range_and_null_aware():
    ids, nulls = hash_ids(pa.array(["abc", "abd", None, "", "abc"]), 100)
    assert ids[0] == ids[4] and ids[2] == 0 and nulls == 1
    assert ((ids[[0, 1, 3, 4]] >= 2) & (ids[[0, 1, 3, 4]] < 102)).all()
    # the same strings in a sliced array hash alike (offsets handled)
    sliced, _ = hash_ids(pa.array(["x", "abc", "abd"]).slice(1), 100)
    assert sliced.tolist() == ids[:2].tolist()
    ints, _ = hash_ids(pa.array([BIG, BIG, 7]), 1000)
    assert ints[0] == ints[1] and 2 <= ints.min() and ints.max() < 1002
    # uint64 ids: the same bits as int64 below 2^63, and no overflow above
    u, _ = hash_ids(pa.array([BIG, 7, 2**64 - 1, 2**63], pa.uint64()), 1000)
    assert u[:2].tolist() == ints[1:].tolist() and (u >= 2).all() and (u < 1002).all()
