"""mtl_train.data.datasets.common: the named datasets' column schemas on the Parquet path."""

import numpy as np
import pyarrow as pa
import pytest
from helpers import open_tables

from mtl_train.data.datasets.common import column_schema
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError


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


def test_label_column_listed_as_feature_is_refused():
    with pytest.raises(ConfigError, match="label leakage"):
        FeatureSchema([SparseFeature("click", 4)], [DenseFeature("x")], [Task("click", "click")])
    with pytest.raises(ConfigError, match="funnel order"):
        FeatureSchema([SparseFeature("a", 4)], [], [Task("buy", "buy", parent="click"), Task("click", "click")])
