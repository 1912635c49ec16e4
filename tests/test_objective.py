"""mtl_train.objective: the sweep objective is a weighted sum of task metrics."""
import math

import pytest


def test_objective_is_a_weighted_sum_of_tasks():
    from omegaconf import OmegaConf

    from mtl_train.config import validate_objective
    from mtl_train.errors import ConfigError
    from mtl_train.objective import objective_value

    val = {"a": {"auc": 0.8, "logloss": 0.3}, "b": {"auc": 0.6, "logloss": 0.5}, "c": {"auc": None, "logloss": 0.1}}
    obj = validate_objective(OmegaConf.create({"metric": "auc", "tasks": {"a": 1.0, "b": 0.5}}))
    assert objective_value(val, obj, "auc/mean") == pytest.approx(0.8 + 0.3)
    obj = validate_objective(OmegaConf.create({"metric": "logloss", "tasks": {"b": 2.0}}))
    assert objective_value(val, obj, "auc/mean") == pytest.approx(1.0)
    assert objective_value(val, validate_objective(OmegaConf.create({"tasks": None})), "auc/mean") == pytest.approx(0.7)
    assert math.isnan(objective_value(val, validate_objective(OmegaConf.create({"tasks": {"c": 1.0}})), "auc/a"))
    with pytest.raises(ConfigError, match="objective.tasks.z"):
        objective_value(val, validate_objective(OmegaConf.create({"tasks": {"z": 1.0}})), "auc/mean")
    with pytest.raises(ConfigError, match="objective.metric"):
        validate_objective(OmegaConf.create({"metric": "acc"}))
    with pytest.raises(ConfigError, match="objective.weight"):
        validate_objective(OmegaConf.create({"weight": 1}))
