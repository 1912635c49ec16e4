"""The scorer on a hand-made ONNX model (sums of its inputs), so that what it feeds is checked
value by value, and without torch."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO
from helpers import parquet_cfg
from onnx import TensorProto, helper

from mtl_train.data.datasets import load_dataset
from mtl_train.errors import DataError
from mtl_train.serving.features import write_features
from mtl_train.serving.scorer import Scorer, is_export_dir


def _sum_model(path):
    """prob_click = sum of the sparse ids, prob_purchase = sum of the dense values,
    prob_purchase_given_click = the sum of the hist ids kept + 1000 * their count."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    ins = [helper.make_tensor_value_info("sparse", i64, ["batch", 2]),
           helper.make_tensor_value_info("dense", f, ["batch", 1]),
           helper.make_tensor_value_info("seq_hist", i64, ["batch", 4]),
           helper.make_tensor_value_info("seq_hist_len", i64, ["batch"])]
    outs = [helper.make_tensor_value_info(n, f, ["batch"])
            for n in ("prob_click", "prob_purchase", "prob_purchase_given_click")]
    one = helper.make_tensor("one", i64, [1], [1])
    k = helper.make_tensor("k", i64, [], [1000])
    nodes = [helper.make_node("ReduceSum", ["sparse", "one"], ["s"], keepdims=0),
             helper.make_node("Cast", ["s"], ["prob_click"], to=f),
             helper.make_node("ReduceSum", ["dense", "one"], ["prob_purchase"], keepdims=0),
             helper.make_node("ReduceSum", ["seq_hist", "one"], ["h"], keepdims=0),
             helper.make_node("Mul", ["seq_hist_len", "k"], ["lk"]),
             helper.make_node("Add", ["h", "lk"], ["hl"]),
             helper.make_node("Cast", ["hl"], ["prob_purchase_given_click"], to=f)]
    graph = helper.make_graph(nodes, "sums", ins, outs, initializer=[one, k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.fixture
def export(data):
    tmp, _, val = data
    bundle = load_dataset(parquet_cfg(tmp), 0)
    folder = tmp / "export"
    folder.mkdir()
    write_features(str(folder), bundle.schema, {"dataset": {"name": "parquet"}, "graph": {"name": "esmm"}})
    _sum_model(folder / "model.onnx")
    return folder, bundle.schema.encoders, val


def test_the_scorer_feeds_the_encoded_rows_to_the_model(export):
    folder, enc, val = export
    assert is_export_dir(str(folder)) and not is_export_dir(str(folder.parent)) and not is_export_dir(None)
    scorer = Scorer(str(folder), threads=1)
    assert scorer.inputs == ["sparse", "dense", "seq_hist", "seq_hist_len"]
    want = enc.encode(val)
    probs = scorer.score(val)
    assert list(probs) == ["prob_click", "prob_purchase", "prob_purchase_given_click"]
    np.testing.assert_array_equal(probs["prob_click"], want["sparse"].sum(1).astype(np.float32))
    np.testing.assert_allclose(probs["prob_purchase"], want["dense"][:, 0], rtol=1e-6)
    kept = [0 if v is None else min(len(v), 4) for v in val.column("hist").to_pylist()]
    np.testing.assert_array_equal(probs["prob_purchase_given_click"], want["seq"].sum(1) + 1000 * np.array(kept))
    # in chunks, or from a dict of lists: the same values
    for name, p in scorer.run(scorer.encode(val), batch_size=7).items():
        np.testing.assert_array_equal(p, probs[name])
    one = scorer.score({"user": [None], "city": ["oslo"], "price": [None], "hist": [[]]})
    assert one["prob_click"][0] == 0 + _city(enc, "oslo")  # user null: id 0
    assert one["prob_purchase"][0] == 0.0 and one["prob_purchase_given_click"][0] == 0.0  # the training mean, no ids
    empty = scorer.score(val.slice(0, 0))
    assert all(len(v) == 0 for v in empty.values())


def _city(enc, value):
    import pyarrow as pa

    from mtl_train.data.encode import hash_ids

    return hash_ids(pa.array([value]), 8, enc.salts["city"])[0][0]


def test_scoring_imports_no_torch(export):
    folder, _, _ = export
    code = ("import sys, json; from mtl_train.serving.scorer import Scorer; "
            f"p = Scorer({str(folder)!r}).score({{'user': [3], 'city': ['rome'], 'price': [1.5], 'hist': [[1, 2]]}}); "
            "print(json.dumps(sorted(p)), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.stdout.strip() == '["prob_click", "prob_purchase", "prob_purchase_given_click"] False', proc.stderr


def test_a_broken_export_folder_is_named_in_one_line(export):
    folder, _, _ = export
    (folder / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(DataError, match=r"model.onnx: not a readable ONNX model \(") as e:
        Scorer(str(folder))
    assert "\n" not in str(e.value)
    (folder / "model.onnx").unlink()
    with pytest.raises(DataError, match=r"model.onnx: no such file \(an export folder holds model.onnx"):
        Scorer(str(folder))
    (folder / "features.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(DataError, match=r"features.json: .*features format 99, this mtl-train reads 1$"):
        Scorer(str(folder))
