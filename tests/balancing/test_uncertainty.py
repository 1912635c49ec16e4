"""loss=uncertainty (Kendall et al., CVPR 2018): the weight gradient and the form per task type."""
import math

import numpy as np
import pytest
import torch
from helpers import Linear, loss_cfg

from mtl_train.balancing.base import build_balancer
from mtl_train.data.schema import FeatureSchema, Task


@pytest.mark.parametrize("form,c", [("classification", 1.0), ("regression", 0.5)])
def test_uncertainty_weight_gradient(form, c):
    bal = build_balancer(loss_cfg("uncertainty", form=form, lr=0.1, init_log_var=0.3), ["a", "b"], None)
    losses = torch.tensor([0.7, 2.0], requires_grad=True)
    bal.backward(losses, torch.tensor([5, 5]), None, {})
    s = 0.3
    # d/ds [c exp(-s) L + s/2] = -c exp(-s) L + 1/2 ; d/dL = c exp(-s)
    assert bal.log_var.grad.tolist() == pytest.approx([-c * math.exp(-s) * 0.7 + 0.5, -c * math.exp(-s) * 2.0 + 0.5])
    assert losses.grad.tolist() == pytest.approx([c * math.exp(-s)] * 2)
    # Adam's first step moves each log variance by lr against the sign of its gradient
    sign = np.sign([-c * math.exp(-s) * 0.7 + 0.5, -c * math.exp(-s) * 2.0 + 0.5])
    assert bal.log_var.detach().tolist() == pytest.approx((s - 0.1 * sign).tolist(), abs=1e-6)
    assert bal.weights().tolist() == pytest.approx((c * np.exp(-(s - 0.1 * sign))).tolist(), abs=1e-6)


def test_uncertainty_auto_form_follows_the_task_type():
    model = Linear([[1.0], [1.0]])
    model.schema = FeatureSchema([], [], [Task("t0", "a"), Task("t1", "b", "regression")])
    bal = build_balancer(loss_cfg("uncertainty"), ["t0", "t1"], model)
    assert bal.kinds == ["classification", "regression"]
    assert bal.weights().tolist() == [1.0, 0.5]
