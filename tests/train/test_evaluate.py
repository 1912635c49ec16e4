"""Evaluation helpers (mtl_train.train.evaluate): the monitored value and the GAUC settings."""
import pytest
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
