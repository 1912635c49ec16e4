"""dataset=aliccp: the preprocessed sample and a raw fragment."""
import pytest
import torch
from conftest import SHARED
from helpers import dataset_cfg

from mtl_train.data.datasets import load_dataset
from mtl_train.data.datasets.aliccp import convert_raw, write_raw
from mtl_train.errors import DataError

ALICCP = SHARED / "ali-ccp-sample"


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
