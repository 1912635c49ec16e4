"""mode=export's exporter (mtl_train/export.py): every backbone under every graph, the signature,
the parity check and what is (not) left on disk."""
import json
import os

import pytest
import torch
from helpers import group_cfg

from mtl_train import export
from mtl_train.data.schema import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature, Task
from mtl_train.errors import ConfigError, DataError
from mtl_train.models.builder import build_model

BACKBONES = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple"]
GRAPHS = ["independent", "esmm", "dbmtl", "gmsl", "aitm"]
TINY = {"single_task": {"hidden": [4]}, "shared_bottom": {"hidden": [4]},
        "omoe": {"expert_hidden": [4], "num_experts": 2}, "mmoe": {"expert_hidden": [4], "num_experts": 2},
        "cgc": {"expert_hidden": [4]}, "ple": {"expert_hidden": [4]}}
TINY_GRAPH = {"independent": {"tower_hidden": [3]}, "esmm": {"tower_hidden": [3]},
              "dbmtl": {"tower_hidden": [3], "head_hidden": [3]}, "gmsl": {"tower_hidden": [3], "gru_hidden": 3},
              "aitm": {"tower_hidden": [3], "attention_dim": 3}}
# ONNX (the slow format to export) on one cell per row and column of the matrix: each backbone and
# each graph once; the .pt2 program on every cell
_REAL_RUNNERS = export._runners
ONNX_CELLS = {(b, GRAPHS[i % len(GRAPHS)]) for i, b in enumerate(BACKBONES)}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def tiny_schema():
    return FeatureSchema([SparseFeature("user", 7), SparseFeature("item", 5)], [DenseFeature("price")],
                         [Task("click", "click"), Task("purchase", "purchase", parent="click")],
                         sequence=[SequenceFeature("history", 6, 3, "mean")])


def tiny_model(backbone="mmoe", graph="independent", schema=None):
    torch.manual_seed(0)
    return build_model(schema or tiny_schema(), group_cfg("model", backbone, embedding_dim=3, **TINY[backbone]),
                       group_cfg("graph", graph, **TINY_GRAPH[graph]))


def rows(n=37, seed=0):
    """``n`` held-out rows: random ids, a history list of 0..3 ids (some null) padded with 0."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 6, (n, 3), generator=g)
    seq[torch.rand(n, 3, generator=g) < 0.2] = 0  # null elements inside a list
    length = torch.randint(0, 4, (n,), generator=g)
    seq[torch.arange(3).unsqueeze(0) >= length.unsqueeze(1)] = 0  # padding
    return {"sparse": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
            "dense": torch.randn(n, 1, generator=g), "seq": seq}


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_under_every_graph_exports_and_passes_parity(tmp_path, backbone, graph):
    formats = ["pt2", "onnx"] if (backbone, graph) in ONNX_CELLS else ["pt2"]
    out = tmp_path / "export"
    manifest = export.export_model(tiny_model(backbone, graph), rows(), str(out), formats)
    names = ["prob_click", "prob_purchase", "prob_purchase_given_click"]
    assert [o["name"] for o in manifest["outputs"]] == names
    assert [i["name"] for i in manifest["inputs"]] == ["sparse", "dense", "seq_history", "seq_history_len"]
    assert set(manifest["parity"]["max_abs_diff"]) == set(formats)
    for per in manifest["parity"]["max_abs_diff"].values():
        assert list(per) == names and max(per.values()) <= 1e-5
    assert sorted(os.listdir(out)) == sorted([f for fmt in formats for f in export.FILES[fmt]] + ["manifest.json"])
    assert os.listdir(tmp_path) == ["export"]  # no temporary directory left beside it


def test_the_serving_module_scores_as_predict_and_ignores_what_pads_a_list():
    model = tiny_model("ple", "esmm").eval()
    module = export.ServingModule(model)
    b = rows()
    inputs = export.serving_inputs(model.schema, b)
    # the length is the position after the last non-null id
    seq, length = inputs[2], inputs[3]
    assert seq.shape == (37, 3) and length.dtype == torch.int64
    for r in range(37):
        nz = [k for k in range(3) if seq[r, k] != 0]
        assert length[r] == (nz[-1] + 1 if nz else 0)
    with torch.no_grad():
        got = module(*inputs)
        batch = dict(b, labels=torch.zeros(37, 2))
        ev = model.graph.eval_outputs(model(batch), batch)
        # anything after the length is padding: garbage there changes nothing
        garbage = torch.where(torch.arange(3) >= length.unsqueeze(1), torch.full_like(seq, 5), seq)
        padded = module(inputs[0], inputs[1], garbage, length)
    assert [n for n, _, _ in module.outputs] == ["prob_click", "prob_purchase", "prob_purchase_given_click"]
    for (_, name, _), g, p in zip(module.outputs, got, padded):
        assert torch.equal(g, ev[name].score) and torch.equal(g, p)
    # ESMM: pCTCVR = pCTR * pCVR
    torch.testing.assert_close(got[1], got[0] * got[2])


def test_a_regression_task_is_a_value_output_and_eval_only_outputs_are_left_out():
    schema = FeatureSchema([SparseFeature("user", 7)], [DenseFeature("price")],
                           [Task("click", "click"), Task("purchase", "purchase", parent="click"),
                            Task("spend", "spend", "regression")], eval_columns=["purchase_if_click"])
    model = tiny_model("mmoe", "esmm", schema)
    assert export.output_names(model) == [("prob_click", "click", "binary"), ("prob_purchase", "purchase", "binary"),
                                          ("prob_purchase_given_click", "purchase_given_click", "binary"),
                                          ("pred_spend", "spend", "regression")]


def _shifted_runners(real, fmt, index, by):
    """``export._runners`` with output ``index`` of format ``fmt`` moved by ``by``."""
    def runners(*args):
        out = real(*args)
        run = out[fmt]
        out[fmt] = lambda inputs: [a + by if k == index else a for k, a in enumerate(run(inputs))]
        return out
    return runners


def test_an_output_off_by_more_than_the_tolerance_refuses_the_export_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "export"
    monkeypatch.setattr(export, "_runners", _shifted_runners(_REAL_RUNNERS, "pt2", 1, 3e-5))
    with pytest.raises(export.ParityError) as e:
        export.export_model(tiny_model("mmoe", "independent"), rows(), str(out), ["pt2"])
    assert str(e.value) == ("export: pt2 output 'prob_purchase' differs from the eager model by 3e-05 (> 1e-05) at "
                            "batch size 37; nothing written")
    assert os.listdir(tmp_path) == []  # neither the target nor the temporary directory
    # just within the tolerance: published, and the figure recorded
    monkeypatch.setattr(export, "_runners", _shifted_runners(_REAL_RUNNERS, "pt2", 1, 5e-6))
    m = export.export_model(tiny_model("mmoe", "independent"), rows(), str(out), ["pt2"])
    assert m["parity"]["max_abs_diff"]["pt2"]["prob_purchase"] == pytest.approx(5e-6, abs=1e-7)  # float32 rounding
    assert m["parity"]["rows"] == 37 and m["parity"]["single_rows"] == 8
    assert json.loads((out / "manifest.json").read_text()) == m


def test_an_existing_directory_is_refused_unless_overwrite_and_then_only_an_export(tmp_path, monkeypatch):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"^export.output: {out} exists; choose another directory or set "
                                          f"export.overwrite=true$"):
        export.export_model(tiny_model(), rows(), str(out), ["pt2"])
    with pytest.raises(ConfigError, match="holds files that are not an export .no manifest.json.; export.overwrite "
                                          "replaces only an earlier export; choose another directory$"):
        export.export_model(tiny_model(), rows(), str(out), ["pt2"], overwrite=True)
    (out / "keep.txt").unlink()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory; name a directory$"):
        export.export_model(tiny_model(), rows(), str(tmp_path / "file"), ["pt2"])
    # the .pt2 format needs no extra; ONNX names it
    monkeypatch.setattr(export.extras, "has_module", lambda name: name != "onnxruntime")
    with pytest.raises(ConfigError) as e:
        export.export_model(tiny_model(), rows(), str(out), ["pt2", "onnx"], overwrite=True)
    assert str(e.value) == ('mode=export: the ONNX format (onnx, onnxscript, onnxruntime) is not installed '
                            '(in the mtl-train clone: pip install ".[export]")')
    first = export.export_model(tiny_model(), rows(), str(out), ["pt2"], overwrite=True)  # an empty directory
    assert first["versions"]["onnxruntime"] is None and first["versions"]["opset"] is None
    # an earlier export is replaced whole; a failed replacement leaves it as it was
    monkeypatch.setattr(export, "_runners", _shifted_runners(_REAL_RUNNERS, "pt2", 0, 1.0))
    with pytest.raises(export.ParityError):
        export.export_model(tiny_model("cgc"), rows(), str(out), ["pt2"], overwrite=True)
    assert json.loads((out / "manifest.json").read_text()) == first
    assert sorted(os.listdir(tmp_path)) == ["export", "file"]


def test_torch_older_than_the_export_apis_is_one_line():
    export.require_torch("2.13.0+cpu")
    export.require_torch("2.6.0")
    with pytest.raises(ConfigError) as e:
        export.require_torch("2.5.1+cu121")
    assert str(e.value) == ("mode=export needs torch >= 2.6 (torch.export and the dynamo ONNX exporter); "
                            "this is torch 2.5.1+cu121")


def test_the_traced_program_keeps_no_operator_of_the_placeholder_labels():
    model = tiny_model("mmoe", "esmm")
    module = export.ServingModule(model.eval())
    program = export.trace(module, export._example(export.serving_inputs(model.schema, rows())))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not {"aten.isnan.default", "aten.prod.dim_int", "aten.zeros.default"} & ops
    assert "aten.embedding.default" in ops and "aten.sigmoid.default" in ops


def test_the_export_holds_features_json_naming_the_programs_inputs_and_outputs(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from mtl_train.serving import features as serving_features

    schema = FeatureSchema([SparseFeature("c0", 7), SparseFeature("c1", 5)], [DenseFeature("d0")],
                           [Task("click", "click"), Task("purchase", "purchase", parent="click")])
    b = rows()
    b.pop("seq")
    synthetic = OmegaConf.create({"dataset": {"name": "synthetic"}, "graph": {"name": "esmm"}})
    m = export.export_model(tiny_model("omoe", "esmm", schema), b, str(tmp_path / "a"), ["pt2"], trained=synthetic)
    assert m["files"] == ["model.pt2", "features.json", "manifest.json"]
    features = json.loads((tmp_path / "a" / "features.json").read_text())
    assert [o["name"] for o in features["outputs"]] == [o["name"] for o in m["outputs"]] == [
        "prob_click", "prob_purchase", "prob_purchase_given_click"]
    assert [i["name"] for i in features["inputs"]] == ["sparse", "dense"]
    # a dataset without a raw form to describe: refused, nothing written
    other = OmegaConf.create({"dataset": {"name": "census"}, "graph": {"name": "esmm"}})
    with pytest.raises(DataError, match="^export: dataset 'census' has no fitted encoders, so features.json cannot "
                                        "describe its raw values$"):
        export.export_model(tiny_model("omoe", "esmm", schema), b, str(tmp_path / "b"), ["pt2"], trained=other)
    # features.json naming other outputs than the program's (the serving side's graph rule
    # drifting from the graph's eval_outputs) stops the export
    real = serving_features.output_specs
    monkeypatch.setattr(serving_features, "output_specs", lambda tasks, graph: real(tasks, graph)[:2])
    with pytest.raises(RuntimeError, match=r"^features.json outputs \['prob_click', 'prob_purchase'\] differ from the "
                                           r"exported program's \['prob_click', 'prob_purchase', 'prob_purchase_given"):
        export.export_model(tiny_model("omoe", "esmm", schema), b, str(tmp_path / "c"), ["pt2"], trained=synthetic)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_a_schema_without_numeric_or_categorical_features_keeps_the_signature(tmp_path):
    schema = FeatureSchema([], [DenseFeature("price")], [Task("click", "click")])
    b = rows()
    b["sparse"] = b["sparse"][:, :0]
    b.pop("seq")
    m = export.export_model(tiny_model("shared_bottom", "independent", schema), b, str(tmp_path / "a"), ["pt2", "onnx"])
    assert [(i["name"], i["shape"]) for i in m["inputs"]] == [("sparse", ["batch", 0]), ("dense", ["batch", 1])]
    assert [o["name"] for o in m["outputs"]] == ["prob_click"]
