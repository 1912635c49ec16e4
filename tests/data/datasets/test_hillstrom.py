"""dataset=hillstrom: conversion, splits, labels kept out of the features."""
import math

import pytest
import torch
from conftest import SHARED
from helpers import dataset_cfg

from mtl_train.data.datasets import load_dataset
from mtl_train.errors import ConfigError

HILLSTROM = SHARED / "hillstrom-email" / "hillstrom.csv"


@pytest.mark.skipif(not HILLSTROM.exists(), reason="shared hillstrom data not present")
def test_hillstrom_converts_once_splits_and_keeps_labels_out_of_features(tmp_path):
    cfg = dataset_cfg("hillstrom", path=str(HILLSTROM), tasks=["visit", "conversion", "spend"], cache_dir=str(tmp_path))
    b = load_dataset(cfg, seed=3)
    assert [len(t) for _, t in b.splits()] == [38400, 12800, 12800]  # 64,000 rows split 60/20/20
    assert b.schema.task_names == ["visit", "conversion", "spend"]
    assert [t.parent for t in b.schema.tasks] == [None, "visit", None]
    assert b.schema.tasks[2].type == "regression"
    features = {f.name for f in b.schema.sparse} | {f.name for f in b.schema.dense}
    assert not features & {"visit", "conversion", "spend", "log1p_spend"}
    labels = torch.cat([t.labels for _, t in b.splits()])
    assert int(labels[:, 0].sum()) == 9394 and int(labels[:, 1].sum()) == 578  # SOURCE.md counts
    assert b.info["funnel_violations"] == {s: {"conversion": 0} for s in ("train", "val", "test")}
    assert float(labels[:, 2].max()) == pytest.approx(math.log1p(499.0), abs=1e-4)
    parquet = list(tmp_path.glob("hillstrom-*.parquet"))
    assert len(parquet) == 1
    mtime = parquet[0].stat().st_mtime_ns
    b2 = load_dataset(cfg, seed=3)  # the cached Parquet is read back, not rebuilt
    assert parquet[0].stat().st_mtime_ns == mtime and torch.equal(b2.train.sparse, b.train.sparse)
    with pytest.raises(ConfigError, match="'purchase'"):
        load_dataset(dataset_cfg("hillstrom", path=str(HILLSTROM), tasks=["purchase"], cache_dir=str(tmp_path)), 0)
