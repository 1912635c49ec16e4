"""loss=dwa (Liu et al., CVPR 2019): weights from the loss history."""
import math

import pytest
import torch
from helpers import loss_cfg

from mtl_train.balancing.base import build_balancer
from mtl_train.balancing.dwa import dwa_weights


def test_dwa_weights_from_a_loss_history():
    w = dwa_weights(torch.tensor([0.5, 0.9]), torch.tensor([1.0, 1.0]), 2.0)
    e1, e2 = math.exp(0.5 / 2), math.exp(0.9 / 2)
    assert w.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], abs=1e-6)
    # undefined ratio (no rows in a window) counts as 1
    w = dwa_weights(torch.tensor([0.5, math.nan]), torch.tensor([1.0, 1.0]), 2.0)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert w.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], abs=1e-6)


def test_dwa_windows_of_steps_drive_the_weights():
    bal = build_balancer(loss_cfg("dwa", window_steps=2), ["a", "b"], None)
    history = [[1.0, 2.0], [3.0, 2.0], [1.0, 1.5], [1.0, 0.5]]  # windows: means (2, 2) then (1, 1)
    for k, l in enumerate(history):
        losses = torch.tensor(l, requires_grad=True)
        bal.backward(losses, torch.tensor([4, 4]), None, {})
        if k < 3:  # first two windows: weights 1 (the paper's w(1) = w(2) = 1)
            assert bal.weights().tolist() == [1.0, 1.0]
        assert losses.grad.tolist() == [1.0, 1.0]
    expect = dwa_weights(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 2)
    assert bal.weights().tolist() == pytest.approx(expect.tolist())
    # a step where "b" has no row does not enter b's window mean
    bal = build_balancer(loss_cfg("dwa", window_steps=2), ["a", "b"], None)
    for l, n in [([1.0, 2.0], [4, 4]), ([1.0, 50.0], [4, 0]), ([2.0, 1.0], [4, 4]), ([2.0, 1.0], [4, 4])]:
        bal.backward(torch.tensor(l, requires_grad=True), torch.tensor(n), None, {})
    expected = dwa_weights(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0]), 2.0)
    assert bal.weights().tolist() == pytest.approx(expected.tolist())
