"""loss=pcgrad (Yu et al., NeurIPS 2020) on known values."""
import math

import numpy as np
import pytest
import torch
from helpers import run_once

from mtl_train.balancing.gradients import pcgrad_coefficients


def test_pcgrad_two_conflicting_gradients_match_the_formula():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    model, bal, logs = run_once("pcgrad", [g1.tolist(), g2.tolist()], own=[2.0, 3.0])
    # g1' = g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5);  g2' = g2 - <g2,g1>/|g1|^2 g1 = (0, 1)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert torch.allclose(p1, torch.tensor([0.5, 0.5])) and torch.allclose(p2, torch.tensor([0.0, 1.0]))
    assert torch.allclose(model.theta.grad, p1 + p2)
    # task-specific parameters keep their own gradient
    assert [float(h.grad) for h in model.h] == [2.0, 3.0]
    assert logs["grad_cos/t0/t1"] == pytest.approx(-1 / math.sqrt(2), abs=1e-6)
    assert torch.allclose(bal.weights(), torch.tensor([2.0, 1.5]))  # theta.grad = (g1 + 0.5 g2) + (g2 + g1)


def test_pcgrad_leaves_agreeing_gradients_and_mean_reduction():
    model, _, _ = run_once("pcgrad", [[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(model.theta.grad, torch.tensor([2.0, 1.0]))  # no conflict: the plain sum
    model, _, _ = run_once("pcgrad", [[1.0, 0.0], [-1.0, 1.0]], reduction="mean")
    assert torch.allclose(model.theta.grad, torch.tensor([0.25, 0.75]))


def test_pcgrad_three_tasks_follow_the_random_order():
    # g0 conflicts with g1 and g2; the order in which g0 is projected changes the result
    K = np.array([[1.0, -0.5, -0.5], [-0.5, 1.0, 0.2], [-0.5, 0.2, 1.0]])
    gen = torch.Generator().manual_seed(3)
    C = pcgrad_coefficients(K, gen)
    for i in range(3):  # every projected gradient no longer conflicts with the last task it was projected on
        assert C[i, i] == 1.0
    # replay: the same generator state gives the same coefficients
    gen2 = torch.Generator().manual_seed(3)
    assert np.allclose(pcgrad_coefficients(K, gen2), C)
    # hand check of row 0 for both orders
    a = np.array([1.0, 0.5, 0.0])  # project on g1 first: <g0,g1> = -0.5 -> +0.5 g1
    a = a + np.array([0.0, 0.0, -(a @ K[:, 2]) / K[2, 2]]) if a @ K[:, 2] < 0 else a
    b = np.array([1.0, 0.0, 0.5])
    b = b + np.array([0.0, -(b @ K[:, 1]) / K[1, 1], 0.0]) if b @ K[:, 1] < 0 else b
    assert np.allclose(C[0], a) or np.allclose(C[0], b)
