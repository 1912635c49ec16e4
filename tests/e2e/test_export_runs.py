"""End-to-end runs of mode=export: a bf16 run on a Parquet log with sequences, its exported
programs against mode=predict, and the export's bad input."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import find_run_dir, run_cli
from helpers import SCHEMA, write_log
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bf16-trained MMoE on the small Parquet log (a hashed column, a sequence, nulls): (folder, run)."""
    tmp = tmp_path_factory.mktemp("export")
    write_log(tmp / "train.parquet", 500, 0)
    write_log(tmp / "val.parquet", 200, 1)
    schema = tmp / "schema.yaml"
    schema.write_text(OmegaConf.to_yaml(OmegaConf.create(SCHEMA)))
    run_cli(["dataset=parquet", f"dataset.train_path={tmp / 'train.parquet'}", f"dataset.val_path={tmp / 'val.parquet'}",
             f"dataset.schema_file={schema}", "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1",
             "trainer.precision=bf16", "model.expert_hidden=[8]", "model.num_experts=2", "trainer.device=cpu"], cwd=tmp)
    return tmp, find_run_dir(tmp)


def test_a_bf16_run_exports_float32_programs_that_score_as_predict(trained):
    import onnxruntime as ort

    from mtl_train.export import serving_inputs

    tmp, run = trained
    out = tmp / "exp"
    proc = run_cli(["mode=export", f"checkpoint={run}", f"export.output={out}", "export.split=val", "hydra.run.dir=ex"],
                   cwd=tmp)
    assert f"export: {out}" in proc.stdout
    # a vocabulary file per vocabulary column (user, hist; city is hashed)
    files = ["features.json", "manifest.json", "model.onnx", "model.onnx.data", "model.pt2", "vocab-000.parquet",
             "vocab-001.parquet"]
    assert sorted(os.listdir(out)) == files
    assert [p for p in os.listdir(tmp) if ".tmp-" in p or ".old-" in p] == []  # no temporary directory
    m = json.loads((out / "manifest.json").read_text())
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert m["source"]["checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert (m["source"]["step"], m["source"]["precision"], m["dtype"]) == (state["step"], "bf16", "float32")
    assert m["versions"]["opset"] == 20 and m["versions"]["torch"] == torch.__version__
    assert sorted(m["files"]) == files
    features = json.loads((out / "features.json").read_text())
    assert [i["name"] for i in features["inputs"]] == [i["name"] for i in m["inputs"]]
    assert [o["name"] for o in features["outputs"]] == [o["name"] for o in m["outputs"]]
    assert [(i["name"], i["dtype"], i["shape"]) for i in m["inputs"]] == [
        ("sparse", "int64", ["batch", 2]), ("dense", "float32", ["batch", 1]), ("seq_hist", "int64", ["batch", 4]),
        ("seq_hist_len", "int64", ["batch"])]
    names = ["prob_click", "prob_purchase", "prob_purchase_given_click"]
    assert [o["name"] for o in m["outputs"]] == names
    assert m["parity"]["rows"] == 200 and m["parity"]["batch_sizes"] == [200, 1]
    for fmt in ("pt2", "onnx"):
        assert max(m["parity"]["max_abs_diff"][fmt].values()) <= 1e-5
    # the exported programs on the val file, encoded with the checkpoint's encoders, give
    # mode=predict's probabilities
    run_cli(["mode=predict", f"checkpoint={run}", f"infer.input={tmp / 'val.parquet'}", f"infer.output={tmp / 'p.parquet'}",
             "hydra.run.dir=pr"], cwd=tmp)
    predicted = pq.read_table(tmp / "p.parquet")
    schema = state["schema"]
    table, _ = schema.encoders.transform(pq.read_table(tmp / "val.parquet"), "val", labels_required=False)
    inputs = serving_inputs(schema, {"sparse": table.sparse, "dense": table.dense, "seq": table.seq})
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = session.run(None, {i["name"]: t.numpy() for i, t in zip(m["inputs"], inputs)})
    with torch.no_grad():
        pt2_scores = torch.export.load(str(out / "model.pt2")).module()(*inputs)
    for name, a, b in zip(names, onnx_scores, pt2_scores):
        want = predicted.column(name).to_numpy()
        assert np.abs(a - want).max() <= 1e-5 and np.abs(b.numpy() - want).max() <= 1e-5, name
        assert ((a >= 0) & (a <= 1)).all()


def test_export_bad_input_is_one_line_and_writes_nothing(trained):
    tmp, run = trained
    out = tmp / "bad"

    def refused(*args):
        proc = run_cli(["mode=export", f"checkpoint={run}", *args], cwd=tmp, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        return proc.stderr.strip().splitlines()[-1]

    assert refused(f"export.output={out}", "export.formats=[pt2,tflite]") == (
        "mtl-train: error: export.formats: unknown format 'tflite' (choose from pt2, onnx)")
    assert not out.exists()
    out.mkdir()
    assert refused(f"export.output={out}", "hydra.run.dir=b1") == (
        f"mtl-train: error: export.output: {out} exists; choose another directory or set export.overwrite=true")
    assert os.listdir(out) == []
    # a checkpoint from before checkpoints held the feature schema
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    del state["schema"]
    old = tmp / "old.pt"
    torch.save(state, old)
    assert refused(f"checkpoint={old}", f"export.output={tmp / 'old'}", "hydra.run.dir=b2") == (
        f"mtl-train: error: {old}: the checkpoint holds no feature schema (written by an older mtl-train)")
    assert not (tmp / "old").exists()
    assert [p for p in os.listdir(tmp) if ".tmp-" in p or ".old-" in p] == []  # no temporary directory
