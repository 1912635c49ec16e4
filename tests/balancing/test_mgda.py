"""loss=mgda (Sener and Koltun, NeurIPS 2018) on known values."""
import pytest
import torch
from helpers import run_once


def test_mgda_two_gradients_give_the_min_norm_point():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    model, bal, _ = run_once("mgda", [g1.tolist(), g2.tolist()], normalization="none")
    # min over gamma of |gamma g1 + (1-gamma) g2|^2 = gamma^2 + 4 (1-gamma)^2 -> gamma = 0.8
    assert torch.allclose(bal.weights(), torch.tensor([0.8, 0.2]))
    assert torch.allclose(model.theta.grad, torch.tensor([0.8, 0.4]))
    assert [float(h.grad) for h in model.h] == pytest.approx([0.8, 0.2])
    # with l2 normalisation the unit gradients are balanced equally
    _, bal, _ = run_once("mgda", [g1.tolist(), g2.tolist()], normalization="l2")
    assert torch.allclose(bal.weights(), torch.tensor([0.5, 0.5]))
