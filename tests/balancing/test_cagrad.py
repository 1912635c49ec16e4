"""loss=cagrad (Liu et al., NeurIPS 2021) on known values."""
import torch
from helpers import run_once


def test_cagrad_with_c_zero_is_the_mean_gradient():
    g = [[1.0, 0.0, 2.0], [-3.0, 1.0, 0.5]]
    model, _, _ = run_once("cagrad", g, own=[4.0, 5.0], c=0.0)
    assert torch.allclose(model.theta.grad, torch.tensor(g).mean(0))
    assert [float(h.grad) for h in model.h] == [4.0, 5.0]
