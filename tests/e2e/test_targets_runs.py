"""End-to-end runs with per-task sample weights and regression label transforms (issue 17)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CENSUS, run_cli
from helpers import SCALED_SCHEMA, write_scaled_log
from omegaconf import OmegaConf

from mtl_train.metrics import binary_metrics, regression_metrics

FAST = ["trainer.progress=false", "trainer.batch_size=128", "trainer.epochs=5", "trainer.device=cpu",
        "dataset.progress=false"]


@pytest.fixture
def scaled(tmp_path):
    """A log whose regression target ``revenue`` is on the scale 1e8 (up to about 3e8)."""
    for name, n, seed in (("train", 4000, 0), ("val", 1000, 1), ("test", 1000, 2)):
        write_scaled_log(tmp_path / f"{name}.parquet", n, seed)
    return tmp_path


def _train(folder, name, tasks):
    schema = folder / f"{name}.yaml"
    schema.write_text(OmegaConf.to_yaml(OmegaConf.create(dict(SCALED_SCHEMA, tasks=tasks))))
    r = run_cli(["dataset=parquet", *(f"dataset.{s}_path={folder / s}.parquet" for s in ("train", "val", "test")),
                 f"dataset.schema_file={schema}", f"hydra.run.dir={folder / name}", *FAST], cwd=folder)
    return folder / name, r.stdout + r.stderr + "".join(f.read_text() for f in (folder / name).glob("*.log"))


def test_a_1e8_scale_target_trains_with_transform_standard_and_warns_without(scaled):
    plain, out = _train(scaled, "plain", ["click", {"name": "revenue", "type": "regression"}])
    assert "regression task 'revenue' (label column 'revenue') has a training mean of 1.055e+08" in out
    before = json.loads((plain / "metrics.json").read_text())["test"]["revenue"]["r2"]
    run, out = _train(scaled, "std", ["click", {"name": "revenue", "type": "regression", "transform": "standard"}])
    assert "far from 1" not in out
    m = json.loads((run / "metrics.json").read_text())["test"]["revenue"]
    assert before < 0 and m["r2"] > 0.95  # measured: -3.38 without the transform, 0.991 with it
    # metrics on the label's scale: the mse is in revenue units squared, not standardised ones
    assert 1e12 < m["mse"] < 1e15
    # predict: pred_revenue on the label's scale, and scoring the file gives the run's metrics
    run_cli(["mode=predict", f"checkpoint={run}", f"infer.input={scaled / 'test.parquet'}",
             f"infer.output={scaled / 'pred.parquet'}", "infer.id_columns=[city]"], cwd=scaled)
    p = pq.read_table(scaled / "pred.parquet")
    pred, label = p.column("pred_revenue").to_numpy(), p.column("label_revenue").to_numpy()
    assert pred.mean() == pytest.approx(label.mean(), rel=0.05) and label.max() > 2e8
    assert regression_metrics(pred, label)["r2"] == pytest.approx(m["r2"], abs=1e-9)
    # eval: the checkpoint's fit, the same metrics
    run_cli(["mode=eval", f"checkpoint={run}", "infer.split=test", f"infer.output={scaled / 'eval.json'}"], cwd=scaled)
    ev = json.loads((scaled / "eval.json").read_text())["test"]["revenue"]
    assert ev["r2"] == pytest.approx(m["r2"], abs=1e-12) and ev["mse"] == pytest.approx(m["mse"], rel=1e-12)


def test_log1p_on_a_negative_label_is_one_line_naming_the_column(scaled):
    schema = scaled / "log.yaml"
    schema.write_text(OmegaConf.to_yaml(OmegaConf.create(
        dict(SCALED_SCHEMA, tasks=[{"name": "revenue", "type": "regression", "transform": "log1p"}]))))
    r = run_cli(["dataset=parquet", f"dataset.train_path={scaled / 'train.parquet'}", f"dataset.schema_file={schema}",
                 *FAST], cwd=scaled, check=False)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "label column 'revenue' of task 'revenue' holds" in last and "transform log1p needs labels >= 0" in last


def test_weighted_task_reports_weighted_metrics_beside_the_unweighted(scaled):
    run, _ = _train(scaled, "w", [{"name": "click", "weight": "w"}, {"name": "revenue", "type": "regression",
                                                                     "transform": "standard"}])
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert {"auc", "logloss", "auc_weighted", "logloss_weighted", "weight_sum"} <= set(m["click"])
    assert "auc_weighted" not in m["revenue"] and "mse_weighted" not in m["revenue"]  # revenue has no weight
    # the weighted AUC is the test predictions' AUC with the file's weights (rows with a null weight left out)
    run_cli(["mode=predict", f"checkpoint={run}", f"infer.input={scaled / 'test.parquet'}",
             f"infer.output={scaled / 'p.parquet'}", "infer.id_columns=[city]"], cwd=scaled)
    p, raw = pq.read_table(scaled / "p.parquet"), pq.read_table(scaled / "test.parquet")
    w = raw.column("w").to_numpy(zero_copy_only=False)
    keep = ~np.isnan(w)
    assert np.isnan(p.column("label_click").to_numpy(zero_copy_only=False)[~keep]).all()  # null weight: no label
    ref = binary_metrics(p.column("prob_click").to_numpy()[keep], raw.column("click").to_numpy()[keep],
                         weight=w[keep].astype(np.float32))  # weights travel as float32
    assert m["click"]["rows"] == keep.sum() == 980
    assert m["click"]["auc_weighted"] == pytest.approx(ref["auc_weighted"], abs=1e-12)
    assert m["click"]["logloss_weighted"] == pytest.approx(ref["logloss_weighted"], rel=1e-9)
    info = json.loads((run / "run.json").read_text())
    assert info["data_report"]["test"]["null_weights"] == {"click": 20}


@pytest.mark.skipif(not CENSUS.exists(), reason="shared census data not present")
def test_census_instance_weight_is_an_option(tmp_path):
    args = ["dataset=census", f"dataset.path={CENSUS}", "dataset.max_rows=1500", "trainer.epochs=1",
            "model.expert_hidden=[8]", "model.num_experts=2", *FAST[:2]]
    run_cli([*args, "dataset.instance_weight=true", f"hydra.run.dir={tmp_path / 'w'}"], cwd=tmp_path)
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())["val"]
    for task in ("income", "marital"):
        assert m[task]["auc_weighted"] is not None and m[task]["weight_sum"] > 1000 * m[task]["rows"] / 10
