"""loss=static: fixed per-task weights and their errors."""
import pytest
from helpers import loss_cfg, run_once

from mtl_train.balancing.base import build_balancer
from mtl_train.errors import ConfigError


def test_static_weights_and_their_errors():
    model, bal, _ = run_once("static", [[1.0], [1.0]], own=[1.0, 1.0], weights={"t1": 3.0})
    assert [float(h.grad) for h in model.h] == [1.0, 3.0]
    with pytest.raises(ConfigError, match="loss.weights.nope"):
        build_balancer(loss_cfg("static", weights={"nope": 1.0}), ["t0"], None)
    with pytest.raises(ConfigError, match="loss.weights.t0"):
        build_balancer(loss_cfg("static", weights={"t0": -1.0}), ["t0"], None)
