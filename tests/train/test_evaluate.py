"""Evaluation (mtl_train.train.evaluate): the monitored value, the GAUC settings and groups."""

import pytest
from helpers import TINY, make_cfg
from omegaconf import OmegaConf

from mtl_train.errors import ConfigError
from mtl_train.train.evaluate import check_gauc_by, monitor_value

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
