"""Funnel datasets (hillstrom, aliccp preprocessed and raw, aliexpress), the prepare cache,
the label checks and the synthetic click bias."""
import json
import math

import pytest
import torch
from conftest import REPO, SHARED, find_run_dir, run_cli
from omegaconf import OmegaConf

from mtl_train.config import validate_group
from mtl_train.data.datasets import load_dataset
from mtl_train.data.datasets.aliccp import convert_raw, write_raw
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError, DataError

HILLSTROM = SHARED / "hillstrom-email" / "hillstrom.csv"
ALICCP = SHARED / "ali-ccp-sample"
ALIEXPRESS = SHARED / "aliexpress-sample"


def dataset_cfg(name, **over):
    c = OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")
    for k, v in over.items():
        c[k] = v
    return validate_group("dataset", c)


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


@pytest.mark.skipif(not ALIEXPRESS.exists(), reason="shared aliexpress sample not present")
def test_aliexpress_sample_loads(tmp_path):
    cfg = dataset_cfg("aliexpress", train_path=str(ALIEXPRESS / "aliexpress_train_sample.csv"),
                      test_path=str(ALIEXPRESS / "aliexpress_test_sample.csv"), cache_dir=str(tmp_path))
    b = load_dataset(cfg, seed=0)
    assert [len(t) for _, t in b.splits()] == [90, 10, 20]
    assert b.train.sparse.shape[1] == 16 and b.train.dense.shape[1] == 63
    assert int(b.train.labels[:, 0].sum() + b.val.labels[:, 0].sum()) == 60  # click=1 in 60 of 100
    assert int(b.test.labels[:, 1].sum()) == 2
    # eval/predict read a file of the same format and encode it with the training encoders
    from mtl_train.data.datasets import read_file

    again, _ = b.schema.encoders.transform(read_file(cfg, str(ALIEXPRESS / "aliexpress_test_sample.csv")))
    assert torch.equal(again.sparse, b.test.sparse) and torch.equal(again.labels, b.test.labels)
    assert torch.allclose(again.dense, b.test.dense)


@pytest.mark.skipif(not ALICCP.exists(), reason="shared ali-ccp sample not present")
def test_aliccp_preprocessed_sample_loads(tmp_path):
    cfg = dataset_cfg("aliccp", train_path=str(ALICCP / "ali_ccp_train_sample.csv"),
                      val_path=str(ALICCP / "ali_ccp_val_sample.csv"), test_path=str(ALICCP / "ali_ccp_test_sample.csv"),
                      cache_dir=str(tmp_path))
    b = load_dataset(cfg, seed=0)
    assert [len(t) for _, t in b.splits()] == [100, 50, 50]
    assert b.train.sparse.shape[1] == 23 and b.train.dense.shape[1] == 8
    assert [int(t.labels[:, 0].sum()) for _, t in b.splits()] == [7, 3, 2]


F1, F2, F3 = "\x01", "\x02", "\x03"


def feats(*items):
    return F1.join(f"{f}{F2}{i}{F3}{v}" for f, i, v in items)


def write_raw_fragment(d):
    (d / "sample_skeleton_train.csv").write_text("\n".join([
        f"1,1,0,idxA,3,{feats(('205', 'i1', 1.0), ('206', 'c1', 1.0), ('508', 'x1', 0.5))}",
        f"2,0,0,idxB,3,{feats(('205', 'i2', 1.0), ('508', 'x2', 0.25), ('508', 'x3', 0.75))}",
        f"3,0,1,idxA,1,{feats(('205', 'i1', 1.0))}",  # purchase without click
    ]) + "\n")
    (d / "common_features_train.csv").write_text("\n".join([
        f"idxA,2,{feats(('101', 'u1', 1.0), ('109_14', 'b1', 2.5))}",
        f"idxB,1,{feats(('101', 'u2', 1.0))}",
    ]) + "\n")
    (d / "sample_skeleton_test.csv").write_text("\n".join([
        f"4,1,1,idxA,1,{feats(('205', 'i1', 1.0))}",
        f"5,0,0,idxC,1,{feats(('205', 'i9', 1.0))}",  # no common row
    ]) + "\n")
    (d / "common_features_test.csv").write_text(f"idxA,1,{feats(('101', 'u1', 1.0))}\n")


def test_raw_aliccp_fragment_joins_common_features(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_raw_fragment(raw)
    t = convert_raw(str(raw / "sample_skeleton_train.csv"), str(raw / "common_features_train.csv")).to_pydict()
    assert t["click"] == [1, 0, 0] and t["purchase"] == [0, 0, 1]
    assert t["205"] == ["i1", "i2", "i1"] and t["206"] == ["c1", None, None]
    assert t["508"] == ["x1", "x2", None] and t["D508"] == [0.5, 0.25, None]  # a repeated field keeps its first
    assert t["101"] == ["u1", "u2", "u1"] and t["109_14"] == ["b1", None, "b1"] and t["D109_14"] == [2.5, None, 2.5]
    assert t["127"] == [None, None, None]
    # streamed in blocks of a few rows, the Parquet file holds the same rows
    import pyarrow.parquet as pq

    n = write_raw(str(raw / "sample_skeleton_train.csv"), str(raw / "common_features_train.csv"),
                  str(tmp_path / "stream.parquet"), block_size=64)
    assert n == 3 and pq.read_table(tmp_path / "stream.parquet").to_pydict() == t

    b = load_dataset(dataset_cfg("aliccp", raw_dir=str(raw), cache_dir=str(tmp_path / "cache")), seed=0)
    assert [len(x) for _, x in b.splits()] == [3, 1, 1]
    col = [f.name for f in b.schema.sparse].index("205")
    assert b.train.sparse[:, col].tolist() == [2, 3, 2]  # i1 (seen twice) -> 2, i2 -> 3
    test_ids = sorted(torch.cat([b.val.sparse[:, col], b.test.sparse[:, col]]).tolist())
    assert test_ids == [1, 2]  # i9 is out of vocabulary
    assert b.info["funnel_violations"]["train"] == {"purchase": 1}

    (raw / "sample_skeleton_train.csv").write_text("1,1,0,idxA,1,205i1\n")
    with pytest.raises(DataError, match="sample_skeleton_train.csv"):
        load_dataset(dataset_cfg("aliccp", raw_dir=str(raw), cache_dir=str(tmp_path / "cache")), seed=0)


def test_label_column_listed_as_feature_is_refused():
    with pytest.raises(ConfigError, match="label leakage"):
        FeatureSchema([SparseFeature("click", 4)], [DenseFeature("x")], [Task("click", "click")])
    with pytest.raises(ConfigError, match="funnel order"):
        FeatureSchema([SparseFeature("a", 4)], [], [Task("buy", "buy", parent="click"), Task("click", "click")])


def test_synthetic_click_bias_selects_the_clicked_population():
    def conv_rate_of_clicked(bias):
        cfg = dataset_cfg("synthetic", train_rows=20000, val_rows=10, test_rows=10, click_bias=bias)
        t = load_dataset(cfg, seed=0).train
        clicked = t.labels[:, 0] == 1
        return float(t.extra["purchase_if_click"][clicked].mean()), float(t.extra["purchase_if_click"].mean())

    clicked0, all0 = conv_rate_of_clicked(0.0)
    clicked1, all1 = conv_rate_of_clicked(1.0)
    assert all0 == all1  # the conversion ground truth does not depend on the click model
    assert clicked1 > clicked0 + 0.05  # the bias makes the clicked rows likelier converters


def test_esmm_run_reports_ctr_cvr_ctcvr_and_entire_space_cvr(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["model=esmm", "model.embedding_dim=4", "graph.tower_hidden=[8]", "dataset.train_rows=3000",
             "dataset.val_rows=1000", "dataset.test_rows=1000", "dataset.click_bias=1.0", "trainer.progress=false",
             "trainer.batch_size=256", "trainer.epochs=1", "trainer.log_every_steps=5"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert set(m) == {"click", "purchase", "purchase_given_click", "purchase_given_click_entire"}
    assert m["click"]["rows"] == m["purchase"]["rows"] == m["purchase_given_click_entire"]["rows"] == 1000
    assert m["purchase_given_click"]["rows"] == m["click"]["positives"]  # CVR on clicked rows only
    assert m["purchase_given_click_entire"]["eval_only"] is True
    info = json.loads((run / "run.json").read_text())
    assert info["funnel_violations"]["train"] == {"purchase": 0}
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/auc/click", "val/auc/purchase", "val/auc/purchase_given_click", "test/auc/purchase_given_click_entire",
            "train/loss/purchase"} <= tags
    assert not any("eval_only" in t for t in tags)
