import json
import zlib

import pyarrow.parquet as pq
from helpers import parquet_cfg

from mtl_train.data.datasets import load_dataset
from mtl_train.serving.features import output_specs, read_features, signature, write_features


def test_features_json_holds_the_encoders_of_the_checkpoint(data):
    tmp, _, _ = data
    bundle = load_dataset(parquet_cfg(tmp), 0)
    out = tmp / "export"
    out.mkdir()
    files = write_features(str(out), bundle.schema, {"dataset": {"name": "parquet"}, "graph": {"name": "independent"}})
    assert files == ["features.json", "vocab-000.parquet", "vocab-001.parquet"]
    assert sorted(p.name for p in out.iterdir()) == files
    doc = json.loads((out / "features.json").read_text())
    assert doc == read_features(str(out))
    enc = bundle.schema.encoders
    user, city = doc["categorical"]
    assert user["encoding"] == "vocabulary" and user["value_type"] == "int64"
    assert pq.read_table(out / user["file"]).column("value").combine_chunks().equals(enc.vocabs["user"].values)
    assert user["size"] == len(enc.vocabs["user"].values) + 2
    assert city == {"name": "city", "encoding": "hash", "buckets": 8, "salt": zlib.crc32(b"city"), "id_kind": "string",
                    "size": 10}
    (hist,) = doc["sequences"]
    assert (hist["max_len"], hist["pooling"], hist["encoding"]) == (4, "mean", "vocabulary")
    assert pq.read_table(out / hist["file"]).column("value").combine_chunks().equals(enc.vocabs["hist"].values)
    (price,) = doc["numeric"]
    assert price == {"name": "price", "norm": "standard", "fill": "mean", "stats": enc.stats["price"]}
    assert doc["tasks"] == [{"name": "click", "label": "click", "type": "binary", "parent": None},
                            {"name": "purchase", "label": "buy", "type": "binary", "parent": "click"}]
    assert doc["ids"] == {"null": 0, "oov": 1, "reserved": 2}
    assert [(i["name"], i["dtype"], i["shape"]) for i in doc["inputs"]] == [
        ("sparse", "int64", ["batch", 2]), ("dense", "float32", ["batch", 1]), ("seq_hist", "int64", ["batch", 4]),
        ("seq_hist_len", "int64", ["batch"])]
    assert [(o["name"], o["kind"]) for o in doc["outputs"]] == [  # no conditional head: P(purchase) again
        ("prob_click", "entire"), ("prob_purchase", "entire"), ("prob_purchase_given_click", "entire")]


def test_outputs_name_the_conditional_probability_of_graphs_that_have_one():
    tasks = [{"name": "click", "type": "binary", "parent": None}, {"name": "purchase", "type": "binary", "parent": "click"},
             {"name": "spend", "type": "regression", "parent": "click"}]
    esmm = output_specs(tasks, {"name": "esmm"})
    assert [(o["name"], o["output"], o["kind"]) for o in esmm] == [
        ("prob_click", "click", "entire"), ("prob_purchase", "purchase", "entire"),
        ("prob_purchase_given_click", "purchase_given_click", "conditional"), ("pred_spend", "spend", "entire")]
    assert output_specs(tasks, {"name": "independent", "parent_positive_only": True}) == esmm
    assert [o["kind"] for o in output_specs(tasks, {"name": "dbmtl"})] == ["entire"] * 4


def test_synthetic_ids_are_the_generated_values_offset_by_the_reserved_ids(tmp_path):
    from helpers import make_cfg

    cfg = make_cfg("dataset.train_rows=50", "dataset.val_rows=20", "dataset.test_rows=20", "dataset.vocab_sizes=[5,3]",
                   "dataset.num_dense=1")
    bundle = load_dataset(cfg.dataset, 0)
    write_features(str(tmp_path), bundle.schema, {"dataset": {"name": "synthetic"}, "graph": {"name": "esmm"}})
    doc = read_features(str(tmp_path))
    assert doc["categorical"] == [{"name": "c0", "encoding": "offset", "size": 7},
                                  {"name": "c1", "encoding": "offset", "size": 5}]
    assert doc["numeric"][0]["norm"] == "none"
    assert signature(bundle.schema, {"graph": {"name": "esmm"}})["outputs"][-1]["name"] == "prob_purchase_given_click"
