"""Evaluation (mtl_train.train.evaluate): batch-invariant scoring shared by training-time
evaluation, mode=eval and mode=predict; the monitored value, the GAUC settings and groups."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import TINY, make_cfg
from omegaconf import OmegaConf

from mtl_train.errors import ConfigError
from mtl_train.train import evaluate as ev
from mtl_train.train.evaluate import check_gauc_by, fixed_chunks, monitor_value

METRICS = {"click": {"auc": 0.7, "logloss": 0.5}, "buy": {"auc": None, "logloss": 0.1},
           "watch": {"auc": 0.9, "logloss": 0.2, "eval_only": True}}


def test_monitor_value_of_one_output_and_the_mean_without_eval_only_outputs():
    assert monitor_value(METRICS, "auc/click") == 0.7
    assert monitor_value(METRICS, "auc/buy") is None
    assert monitor_value(METRICS, "auc/mean") == pytest.approx(0.7)  # buy undefined, watch eval-only
    assert monitor_value(METRICS, "logloss/mean") == pytest.approx(0.3)
    assert monitor_value({"buy": {"auc": None}}, "auc/mean") is None
    with pytest.raises(ConfigError, match=r"trainer.monitor: no evaluated output 'cart' \(have \['buy', 'click', 'w"):
        monitor_value(METRICS, "auc/cart")


def test_gauc_needs_gauc_by_in_the_monitor_or_the_objective():
    def cfg(monitor="auc/mean", gauc_by=None, metric="auc", tasks=None):
        return OmegaConf.create({"trainer": {"monitor": monitor, "gauc_by": gauc_by},
                                 "objective": {"metric": metric, "tasks": tasks}})

    check_gauc_by(cfg())
    check_gauc_by(cfg("gauc/mean", gauc_by="user_id"))
    check_gauc_by(cfg(metric="gauc"))  # objective.tasks null: the monitor counts, not objective.metric
    with pytest.raises(ConfigError, match="trainer.monitor: gauc needs trainer.gauc_by"):
        check_gauc_by(cfg("gauc/click"))
    with pytest.raises(ConfigError, match="objective.metric: gauc needs trainer.gauc_by"):
        check_gauc_by(cfg(metric="gauc", tasks={"click": 1.0}))


def test_gauc_groups_by_a_feature_and_leaves_out_null_and_oov_ids():
    from mtl_train.data.datasets import load_dataset
    from mtl_train.data.schema import OOV_ID
    from mtl_train.metrics import group_auc
    from mtl_train.train.evaluate import evaluate
    from mtl_train.train.infer import predict_table
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "trainer.gauc_by=c2", "trainer.monitor=gauc/mean")
    data = load_dataset(cfg.dataset, cfg.seed)
    val = data.val
    val.sparse[:50, 2] = OOV_ID  # as if 50 rows came from users never seen in training
    val.sparse[50:60, 2] = 0  # null ids
    tr = Trainer(cfg, data, "/tmp/unused-gauc-run")
    m = evaluate(tr.model, val, tr.device, 128, "val", tr.gauc_index)["click"]
    # the same numbers from the row-order predictions, grouped by hand
    score, label, _ = predict_table(tr.model, val, tr.device, 128)["click"]
    g = val.sparse[:, 2].numpy()
    want = group_auc(score[60:], label[60:], g[60:])
    assert m["gauc_rows"] == want["gauc_rows"] and m["gauc_groups"] == want["gauc_groups"]
    assert m["gauc"] == pytest.approx(want["gauc"], abs=1e-12)
    # with the OOV and null rows as groups of their own the value would differ
    assert group_auc(score, label, g)["gauc_rows"] > m["gauc_rows"]
    assert m["auc"] is not None and m["rows"] == len(val)  # the plain metrics keep every row
    with pytest.raises(ConfigError, match="trainer.gauc_by: no categorical feature 'user'"):
        Trainer(make_cfg(*TINY, "trainer.gauc_by=user"), data, "/tmp/unused-gauc-run")
    with pytest.raises(ConfigError, match="trainer.monitor: gauc needs trainer.gauc_by"):
        Trainer(make_cfg(*TINY, "trainer.monitor=gauc/click"), data, "/tmp/unused-gauc-run")




DATA = ["dataset.train_rows=2000", "dataset.val_rows=500", f"dataset.test_rows={2 * ev.EVAL_CHUNK + 371}",
        "dataset.vocab_sizes=[50,50,20]", "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1",
        "trainer.device=cpu"]


SMALL = [*DATA, "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]"]


def test_fixed_chunks_recut_any_batches_into_equal_chunks_and_pad_only_the_last():
    rows = torch.arange(23)

    def batches(sizes):
        s = 0
        for n in sizes:
            yield {"labels": rows[s:s + n].float(), "sparse": rows[s:s + n].view(-1, 1) * 10}
            s += n

    for sizes in ([23], [1] * 23, [7, 7, 7, 2], [5, 0, 18], [8, 8, 7], [30 - 7]):
        got = list(fixed_chunks(batches(sizes), 8))
        assert [n for _, n in got] == [8, 8, 7]
        assert all(len(c["labels"]) == 8 and c["sparse"].shape == (8, 1) for c, _ in got)
        assert torch.cat([c["labels"][:n] for c, n in got]).tolist() == list(range(23))
        assert got[-1][0]["labels"][7].item() == 22 and got[-1][0]["sparse"][7].item() == 220  # padding: last row
    assert list(fixed_chunks(batches([]), 8)) == []


def test_scores_are_bit_identical_in_any_batch_size_in_eval_predict_and_training(tmp_path):
    """A row's probability is the same float32 alone, in batches of 1, 7, 1000 and the whole
    split, in mode=eval and mode=predict, and training-time evaluation scored it so: the
    split is longer than two chunks, so chunk borders and a padded last chunk are crossed."""
    from mtl_train.metrics import binary_metrics
    from mtl_train.train.infer import load_input, load_model, predict_table, run_eval, run_predict
    from mtl_train.train.trainer import run

    n = 2 * ev.EVAL_CHUNK + 371
    train_dir = tmp_path / "train"
    results = run(make_cfg(*SMALL), str(train_dir))
    assert json.loads((train_dir / "metrics.json").read_text())["test"] == results["test"]
    probs = {}
    for bs in (1, 7, 1000, n):
        common = ["trainer.device=cpu", f"checkpoint={train_dir}", f"infer.batch_size={bs}"]
        ev_bs = run_eval(make_cfg("mode=eval", *common), str(tmp_path / f"ev{bs}"))
        assert ev_bs["test"] == results["test"], bs  # exactly the training run's evaluation
        out = run_predict(make_cfg("mode=predict", *common), str(tmp_path / f"pr{bs}"))
        tbl = pq.read_table(out)
        assert tbl.num_rows == n
        probs[bs] = {c: tbl.column(c).to_numpy(zero_copy_only=False) for c in tbl.column_names if c.startswith("prob_")}
        for task, p in probs[bs].items():
            y = tbl.column(task.replace("prob_", "label_")).to_numpy(zero_copy_only=False)
            keep = ~np.isnan(y)
            m = binary_metrics(p[keep], y[keep])
            want = results["test"][task[len("prob_"):]]
            assert (m["auc"], m["logloss"], m["rows"]) == (want["auc"], want["logloss"], want["rows"])
    assert results["test"]["click"]["rows"] == n  # padded rows reach no metric
    for bs in (7, 1000, n):
        for c, p in probs[bs].items():
            assert p.dtype == np.float32 and np.array_equal(p.view(np.int32), probs[1][c].view(np.int32)), (bs, c)
    # a row scored alone (or with a few others) gets the bits it gets in the whole split
    model, trained, schema, _ = load_model(str(train_dir), torch.device("cpu"))
    table, _, _ = load_input(make_cfg("mode=predict", f"checkpoint={train_dir}"), trained, schema, False)
    for rows in ([0], [ev.EVAL_CHUNK - 1], [ev.EVAL_CHUNK], [n - 1], [5, 3000, 17]):
        alone = predict_table(model, table.subset(torch.tensor(rows)), torch.device("cpu"), 1000)
        for name, (score, _, _) in alone.items():
            assert np.array_equal(score.view(np.int32), probs[n][f"prob_{name}"][rows].view(np.int32)), (rows, name)


@pytest.mark.parametrize("model,graph", [("mmoe", "independent"), ("omoe", "independent"), ("cgc", "independent"),
                                         ("ple", "independent"), ("shared_bottom", "independent"),
                                         ("single_task", "independent"), ("esmm", "esmm"), ("dbmtl", "dbmtl"),
                                         ("gmsl", "gmsl"), ("aitm", "aitm"), ("ple", "esmm")])
def test_every_backbone_and_graph_scores_a_row_the_same_in_any_batch(model, graph):
    """Rows are independent in every backbone and graph, and at the fixed chunk shape their
    bits do not depend on where a row sits in the chunk (the expert kernels included)."""
    from mtl_train.data.datasets import load_dataset
    from mtl_train.models.builder import build_model
    from mtl_train.train.infer import predict_table

    cfg = make_cfg(*DATA, f"model={model}", f"graph={graph}", "dataset.train_rows=50", "dataset.val_rows=50")
    data = load_dataset(cfg.dataset, cfg.seed)
    torch.manual_seed(1)
    m = build_model(data.schema, cfg.model, cfg.graph)
    cpu = torch.device("cpu")
    whole = predict_table(m, data.test, cpu, len(data.test))
    assert m.training  # scoring leaves the model's mode as it found it
    for bs in (7, 1000):
        for name, (score, label, _) in predict_table(m, data.test, cpu, bs).items():
            assert np.array_equal(score.view(np.int32), whole[name][0].view(np.int32)), (bs, name)
            assert np.array_equal(label, whole[name][1], equal_nan=True)
    perm = torch.randperm(len(data.test))[:50]
    for name, (score, _, _) in predict_table(m, data.test.subset(perm), cpu, 1).items():
        assert np.array_equal(score.view(np.int32), whole[name][0][perm.numpy()].view(np.int32)), name


def test_a_monitor_metric_no_monitored_task_reports_is_refused():
    from mtl_train.data.schema import FeatureSchema, Task
    from mtl_train.train.evaluate import check_monitor

    reg = FeatureSchema([], [], [Task("a", "a", "regression"), Task("b", "b", "regression")])
    mixed = FeatureSchema([], [], [Task("click", "click"), Task("spend", "spend", "regression")])
    for schema, monitor in ((reg, "mse/mean"), (reg, "r2/b"), (mixed, "auc/mean"), (mixed, "mse/mean"),
                            (mixed, "auc/click"), (mixed, "auc/click_given_x")):  # not a task: monitor_value's
        check_monitor(schema, monitor)
    with pytest.raises(ConfigError, match=r"^trainer.monitor: auc is reported for binary tasks only, and no task of "
                                          r"this dataset is one; e.g. trainer.monitor=mse/mean trainer.monitor_mode=min$"):
        check_monitor(reg, "auc/mean")
    with pytest.raises(ConfigError, match=r"^trainer.monitor: mse is reported for regression tasks only, and task 'click' "
                                          r"is not one; e.g. trainer.monitor=auc/mean trainer.monitor_mode=max$"):
        check_monitor(mixed, "mse/click")


@pytest.mark.parametrize("model", ["mmoe", "ple"])
def test_recording_gates_changes_no_metric_and_counts_every_real_row_once(model):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.models.builder import build_model
    from mtl_train.models.gates import GateRecorder, gate_statistics

    cfg = make_cfg(*DATA, f"model={model}", "dataset.train_rows=50", "dataset.val_rows=50")
    data = load_dataset(cfg.dataset, cfg.seed)
    torch.manual_seed(1)
    m = build_model(data.schema, cfg.model, cfg.graph)
    cpu = torch.device("cpu")
    plain = ev.evaluate(m, data.test, cpu, 7, "test")
    rec = GateRecorder()
    recorded = ev.evaluate(m, data.test, cpu, 7, "test", gates=rec)
    assert json.dumps(recorded) == json.dumps(plain)
    assert m.backbone.gate_recorder is None
    assert set(rec.rows.values()) == {len(data.test)}  # every gate saw each real row once, no padding
    stats = gate_statistics(m.backbone.gate_layout(data.schema.task_names), rec)
    for lv in stats:
        for row in lv["weight"]:
            assert sum(w for w in row if w is not None) == pytest.approx(1.0)
