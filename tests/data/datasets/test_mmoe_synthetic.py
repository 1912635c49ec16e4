"""dataset=mmoe_synthetic: the MMoE paper's generator (Ma et al., KDD 2018)."""
import numpy as np
import pytest
import torch
from helpers import dataset_cfg

from mtl_train.data.datasets import load_dataset
from mtl_train.data.datasets.mmoe_synthetic import LABEL_CORRELATION, labels, sine_parameters, weight_vectors
from mtl_train.errors import ConfigError


@pytest.mark.parametrize("p", [-0.3, 0.0, 0.5, 0.9, 1.0])
def test_the_weight_vectors_have_cosine_p_and_norm_c(p):
    w1, w2 = weight_vectors(100, p, 2.0, seed=3)
    assert np.linalg.norm(w1) == pytest.approx(2.0, abs=1e-12)
    assert np.linalg.norm(w2) == pytest.approx(2.0, abs=1e-12)
    assert w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)) == pytest.approx(p, abs=1e-12)


def test_the_labels_follow_the_formula_with_the_published_sines():
    cfg = dataset_cfg("mmoe_synthetic")
    alphas, betas = sine_parameters(cfg)
    assert alphas.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert betas.tolist() == [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    # one row by hand: w^T x = 0.5 -> 0.5 + sum_j sin(alpha_j 0.5 + beta_j) + noise
    x, w = np.array([[1.0, 0.0]]), np.array([0.5, 7.0])
    expected = 0.5 + sum(np.sin(0.5 * a + b) for a, b in zip(alphas, betas)) + 0.25
    assert labels(x, w, alphas, betas, np.array([0.25]))[0] == pytest.approx(expected, abs=1e-12)


def test_splits_schema_and_determinism():
    cfg = dataset_cfg("mmoe_synthetic", train_rows=50, val_rows=20, test_rows=30, dim=6)
    b = load_dataset(cfg, seed=1)
    assert [t.name for t in b.schema.tasks] == ["task1", "task2"]
    assert [t.type for t in b.schema.tasks] == ["regression", "regression"]
    assert b.schema.sparse == [] and len(b.schema.dense) == 6
    assert [len(s) for _, s in b.splits()] == [50, 20, 30]
    assert b.train.sparse.shape == (50, 0) and b.train.dense.shape == (50, 6) and b.train.labels.shape == (50, 2)
    again = load_dataset(cfg, seed=1)
    assert torch.equal(b.test.dense, again.test.dense) and torch.equal(b.test.labels, again.test.labels)
    other = load_dataset(cfg, seed=2)
    assert not torch.equal(b.train.dense, other.train.dense)
    assert not torch.equal(b.val.dense, b.test.dense[:20])  # each split draws its own rows


@pytest.mark.parametrize("p", sorted(LABEL_CORRELATION))
def test_the_label_correlation_is_the_documented_one(p):
    # corr(y1, y2) depends on p, c, the sines and the noise, not on d or u1, u2 (see the module
    # docstring), so a small d keeps this fast; 300,000 rows: standard error below 0.002
    cfg = dataset_cfg("mmoe_synthetic", train_rows=300_000, val_rows=1, test_rows=1, dim=4, task_correlation=p)
    y = load_dataset(cfg, seed=0).train.labels.double().numpy()
    assert np.corrcoef(y.T)[0, 1] == pytest.approx(LABEL_CORRELATION[p], abs=0.01)
    assert y.var(0) == pytest.approx([7.07, 7.07], abs=0.1)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"^dataset.task_correlation: must be in \[-1, 1\], got 1.5$"):
        load_dataset(dataset_cfg("mmoe_synthetic", task_correlation=1.5), seed=0)
    with pytest.raises(ConfigError, match=r"^dataset.alphas: needs num_sines=10 values, got 2$"):
        load_dataset(dataset_cfg("mmoe_synthetic", alphas=[1.0, 2.0]), seed=0)
    with pytest.raises(ConfigError, match="^dataset.dim: needs at least 2 dimensions"):
        load_dataset(dataset_cfg("mmoe_synthetic", dim=1), seed=0)
