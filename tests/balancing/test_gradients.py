"""balancing/gradients.py: min-norm, CAGrad dual and Gram matrix solvers on known values."""
import math

import numpy as np
import pytest
import torch

from mtl_train.balancing.gradients import cagrad_coefficients, min_norm_weights


def test_min_norm_frank_wolfe_matches_a_grid_search():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 5))
    K = G @ G.T
    a = min_norm_weights(K)
    best = min(((x, y, 1 - x - y) for x in np.linspace(0, 1, 201) for y in np.linspace(0, 1, 201) if x + y <= 1),
               key=lambda w: np.asarray(w) @ K @ np.asarray(w))
    assert a.sum() == pytest.approx(1.0) and (a >= 0).all()
    assert a @ K @ a <= np.asarray(best) @ K @ np.asarray(best) + 1e-12
    # optimality on the simplex: (K a)_j >= a^T K a for every j, with equality where a_j > 0
    Ka, v = K @ a, a @ K @ a
    assert (Ka >= v - 1e-9).all() and np.allclose(Ka[a > 1e-9], v, atol=1e-9)


def test_cagrad_solves_its_dual_problem():
    K = np.array([[1.0, -0.6], [-0.6, 4.0]])
    c = 0.4
    a, w = cagrad_coefficients(K, c, rescale=0)
    g0n = math.sqrt(K.mean())
    f = lambda x: x @ K @ np.array([0.5, 0.5]) + c * g0n * math.sqrt(x @ K @ x)  # noqa: E731
    grid = min((np.array([t, 1 - t]) for t in np.linspace(0, 1, 10001)), key=f)
    assert f(w) == pytest.approx(f(grid), abs=1e-7)
    gw = math.sqrt(w @ K @ w)
    assert np.allclose(a, 0.5 + c * g0n / gw * w, atol=1e-6)
    a1, _ = cagrad_coefficients(K, c, rescale=1)
    assert np.allclose(a1, a / (1 + c * c))


def test_gram_of_bfloat16_gradients_is_taken_in_float32():
    # under trainer.precision=bf16 the shared representation's gradient is bfloat16; torch.dot of two
    # bfloat16 vectors returns bfloat16 (8 bits of mantissa), which moved MGDA's weights by ~0.02
    from mtl_train.balancing.gradients import gram

    g = torch.Generator().manual_seed(0)
    base = torch.randn(100_000, generator=g)
    g1 = (base + 0.1 * torch.randn(100_000, generator=g)).bfloat16()
    g2 = (base + 0.13 * torch.randn(100_000, generator=g)).bfloat16()
    K = gram([[g1], [g2]], [0])
    exact = np.array([[float(a.double() @ b.double()) for b in (g1, g2)] for a in (g1, g2)])
    assert np.abs(K - exact).max() / np.abs(exact).max() < 1e-5
    assert np.allclose(min_norm_weights(K), min_norm_weights(exact), atol=1e-4)
