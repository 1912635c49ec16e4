"""The synthetic regression data of the MMoE paper, with a knob for task relatedness.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, section 3.2 (synthetic data generation):

1. two orthogonal unit vectors u1, u2 in R^d;
2. w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2), so that cos(w1, w2) = p
   (``task_correlation``; the paper's "Pearson correlation of the two linear parts");
3. x ~ N(0, I_d), one row per example;
4. y_i = w_i^T x + sum_{j=1..m} sin(alpha_j w_i^T x + beta_j) + eps_i, eps_i ~ N(0, 0.01).

Two regression tasks (``task1`` on label ``y1``, ``task2`` on ``y2``, MSE, reported as
mse/r2), ``dim`` numeric features ``x0 .. x{d-1}`` and no categorical feature.

Choices the paper leaves open, and the ones made here:

- alpha and beta: the paper gives no values. Defaults: the authors' published generator as
  issue 17 quotes it, ``c = 1``, ``m = 10``, alpha_j = 1, 2, ..., m and beta_j = j^2 for
  j = 0, ..., m - 1 (``alphas``/``betas`` null; a list of m numbers sets them). The PLE paper
  (Tang et al., RecSys 2020) instead draws them from N(0, 1) with d = 512.
- the noise: N(0, 0.01) is read as **variance** 0.01 (standard deviation 0.1), the usual
  reading of N(mu, sigma^2); ``noise_var`` sets it.
- u1, u2: u1 = g1 / |g1| and u2 the unit part of g2 orthogonal to u1 (Gram-Schmidt), for
  g1, g2 ~ N(0, I_d) drawn from the run's seed; the same u1, u2 serve all three splits.
  Every split draws its own x and eps, so a new seed gives fresh data and fresh weight vectors.
- determinism: u1, u2 from ``numpy.random.default_rng([seed, 0])``, split k (train 0, val 1,
  test 2) from ``default_rng([seed, 1 + k])``; the same seed and config give identical tables.

Correlation of the two **labels**: w1^T x and w2^T x are jointly Gaussian with variance c^2 and
covariance p c^2 whatever u1 and u2 are, so corr(y1, y2) depends on p, c, the alphas, betas
and the noise only. It is not p: the sines add variance that is only partly shared. With the
defaults (c = 1, m = 10, the published sequences, noise variance 0.01), computed once over
2,000,000 simulated rows and, as a check, by 200 x 200-point Gauss-Hermite quadrature over
(w1^T x, w2^T x) (the two agree to 0.001): p = 0.5 -> 0.218, p = 0.9 -> 0.457, p = 1.0 -> 0.999
(``LABEL_CORRELATION``; tests/data/datasets/test_mmoe_synthetic.py checks it on a sample to
within 0.01). Both labels have mean about 0.106 and variance about 7.07 at every p, so an MSE
of 7 is the constant predictor's and 0.01 the noise floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from mtl_train.data.schema import DatasetBundle, DenseFeature, FeatureSchema, Table, Task
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register

LABEL_CORRELATION = {0.5: 0.218, 0.9: 0.457, 1.0: 0.999}
"""Pearson correlation of y1 and y2 under the default config, by task_correlation p (see the
module docstring: 2,000,000 simulated rows, checked by quadrature)."""


@dataclass
class MMoESyntheticData:
    name: str = "mmoe_synthetic"
    train_rows: int = param(10_000, "rows of the train split", positive=True)
    val_rows: int = param(2_000, "rows of the val split", positive=True)
    test_rows: int = param(2_000, "rows of the test split", positive=True)
    dim: int = param(100, "input dimension d: numeric features x0 .. x{d-1}, x ~ N(0, I_d)", positive=True)
    task_correlation: float = param(0.5, "p = cos(w1, w2), in [-1, 1]")
    scale: float = param(1.0, "c: w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2)", positive=True)
    num_sines: int = param(10, "m: sine terms per label", non_negative=True)
    alphas: Optional[List[float]] = param(None, "m frequencies alpha_j; null: 1, 2, ..., m (the published generator)")
    betas: Optional[List[float]] = param(None, "m phases beta_j; null: 0, 1, 4, ..., (m-1)^2 (the published generator)")
    noise_var: float = param(0.01, "variance of the label noise eps_i ~ N(0, noise_var)", non_negative=True)


def sine_parameters(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The alphas and betas ([m] float64 each) of the config: the given lists, or the published
    generator's alpha_j = j + 1, beta_j = j^2 (j = 0..m-1).

    Raises:
        ConfigError: a list whose length is not ``num_sines``."""
    m = int(cfg.num_sines)
    out = []
    for key, default in (("alphas", np.arange(1, m + 1, dtype=np.float64)), ("betas", np.arange(m, dtype=np.float64) ** 2)):
        given = cfg.get(key)
        if given is None:
            out.append(default)
            continue
        if len(given) != m:
            raise ConfigError(f"dataset.{key}: needs num_sines={m} values, got {len(given)}")
        out.append(np.asarray(list(given), dtype=np.float64))
    return out[0], out[1]


def weight_vectors(dim: int, p: float, c: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """w1 = c u1 and w2 = c (p u1 + sqrt(1 - p^2) u2) ([dim] float64 each) for orthogonal unit
    u1, u2 drawn from ``seed`` (see the module docstring); cos(w1, w2) = p up to rounding.

    Raises:
        ConfigError: ``dim`` < 2 (no two orthogonal directions) or |p| > 1."""
    if dim < 2:
        raise ConfigError(f"dataset.dim: needs at least 2 dimensions for two orthogonal vectors, got {dim}")
    if not -1 <= p <= 1:
        raise ConfigError(f"dataset.task_correlation: must be in [-1, 1], got {p}")
    rng = np.random.default_rng([seed, 0])
    g1, g2 = rng.normal(0, 1, dim), rng.normal(0, 1, dim)
    u1 = g1 / np.linalg.norm(g1)
    g2 = g2 - (g2 @ u1) * u1
    u2 = g2 / np.linalg.norm(g2)
    return c * u1, c * (p * u1 + np.sqrt(1 - p * p) * u2)


def labels(x: np.ndarray, w: np.ndarray, alphas: np.ndarray, betas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """y = w^T x + sum_j sin(alpha_j w^T x + beta_j) + noise: x [N, d], w [d], alphas and betas
    [m], noise [N] -> [N] float64."""
    s = x @ w
    return s + np.sin(s[:, None] * alphas[None, :] + betas[None, :]).sum(1) + noise


def _split_table(cfg, w1, w2, alphas, betas, seed: int, rows: int, split_id: int) -> Table:
    rng = np.random.default_rng([seed, 1 + split_id])
    x = rng.normal(0, 1, (rows, int(cfg.dim)))
    sd = float(np.sqrt(cfg.noise_var))
    eps = rng.normal(0, sd, (rows, 2)) if sd > 0 else np.zeros((rows, 2))
    y = np.stack([labels(x, w1, alphas, betas, eps[:, 0]), labels(x, w2, alphas, betas, eps[:, 1])], 1)
    return Table(torch.zeros(rows, 0, dtype=torch.int64), torch.from_numpy(x.astype(np.float32)),
                 torch.from_numpy(y.astype(np.float32)))


@register("dataset", "mmoe_synthetic", MMoESyntheticData)
def generate(cfg, seed: int) -> DatasetBundle:
    """Generate train/val/test tables (see the module docstring): dense float32 [N, dim], labels
    float32 [N, 2] (y1, y2), no sparse columns.

    Raises:
        ConfigError: ``dim`` < 2, |task_correlation| > 1, ``alphas``/``betas`` of a length other
            than ``num_sines``."""
    p = float(cfg.task_correlation)
    w1, w2 = weight_vectors(int(cfg.dim), p, float(cfg.scale), seed)
    alphas, betas = sine_parameters(cfg)
    schema = FeatureSchema(
        sparse=[],
        dense=[DenseFeature(f"x{j}") for j in range(int(cfg.dim))],
        tasks=[Task("task1", "y1", "regression"), Task("task2", "y2", "regression")],
    )
    tables = [_split_table(cfg, w1, w2, alphas, betas, seed, int(cfg[f"{s}_rows"]), k)
              for k, s in enumerate(("train", "val", "test"))]
    return DatasetBundle(schema, *tables, {"protocol": f"mmoe_synthetic (p={p}, seed {seed})"})
