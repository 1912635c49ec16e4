"""Built-in synthetic impression log (the default dataset): no files needed.

Each impression has ``len(vocab_sizes)`` categorical ids with Zipf-distributed frequencies
(as in real logs) and ``num_dense`` standard-normal numeric features. Labels follow a hidden
logistic model:

    s_click = sum_f a_f[id_f] + x_dense . u          (standardised to unit variance)
    s_own   = sum_f b_f[id_f] + x_dense . v          (standardised, independent of s_click)
    s_cvr   = rho * s_click + sqrt(1 - rho^2) * s_own,   rho = ``task_correlation``
    click             ~ Bernoulli(sigmoid(logit(click_rate) + signal * (s_click + click_bias * s_cvr)))
    purchase_if_click ~ Bernoulli(sigmoid(logit(cvr_rate) + signal * s_cvr))
    purchase          = click AND purchase_if_click

so purchase only happens inside click, and ``task_correlation`` sets how strongly the two
tasks share their structure. ``click_bias`` (default 0) makes the click model select on the
conversion score itself: the clicked population is then a biased sample of the impressions
(sample-selection bias, the problem ESMM (Ma et al., SIGIR 2018) addresses): with
``click_bias`` > 0 the clicked rows are those likelier to convert, with < 0 the unlikely ones.
``purchase_if_click`` (would this impression convert if clicked) is kept as an
evaluation-only column, never a feature. Everything is deterministic from ``seed``: the hidden
weights from ``seed``, and each split's rows from ``seed`` plus the split's index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from mtl_train.data.schema import NUM_RESERVED_IDS, DatasetBundle, DenseFeature, FeatureSchema, SparseFeature, Table, Task
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register


@dataclass
class SyntheticData:
    name: str = "synthetic"
    train_rows: int = param(100_000, "rows of the train split", positive=True)
    val_rows: int = param(20_000, "rows of the val split", positive=True)
    test_rows: int = param(20_000, "rows of the test split", positive=True)
    vocab_sizes: List[int] = param(doc="vocabulary size of each categorical feature",
                                   factory=lambda: [10_000, 10_000, 1000, 1000, 1000, 100, 100, 10])
    num_dense: int = param(4, "numeric features", non_negative=True)
    zipf_a: float = param(1.2, "Zipf exponent of id frequencies")
    click_rate: float = param(0.1, "base rate of click (before the signal shifts it)")
    cvr_rate: float = param(0.1, "base rate of purchase given click")
    signal: float = param(1.5, "scale of the hidden logistic scores (higher = more learnable)")
    task_correlation: float = param(0.5, "correlation of the click and conversion scores, in [-1, 1]")
    click_bias: float = param(0.0, "weight of the conversion score in the click model: != 0 biases the clicked population")


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def _check(cfg) -> float:
    """Check the sizes and rates; returns ``task_correlation`` as a float.

    Raises:
        ConfigError: a size is not positive, a rate is outside (0, 1), or |task_correlation| > 1.
    """
    for key in ("train_rows", "val_rows", "test_rows"):
        if cfg[key] <= 0:
            raise ConfigError(f"dataset.{key}: must be positive, got {cfg[key]}")
    if any(v <= 0 for v in cfg.vocab_sizes):
        raise ConfigError(f"dataset.vocab_sizes: every size must be positive, got {list(cfg.vocab_sizes)}")
    for key in ("click_rate", "cvr_rate"):
        if not 0 < cfg[key] < 1:
            raise ConfigError(f"dataset.{key}: must be in (0, 1), got {cfg[key]}")
    rho = float(cfg.task_correlation)
    if not -1 <= rho <= 1:
        raise ConfigError(f"dataset.task_correlation: must be in [-1, 1], got {rho}")
    return rho


@dataclass
class _HiddenModel:
    """The hidden logistic model's weights, drawn once from the seed: ``w_click[f]`` and ``w_own[f]``
    ([vocab_sizes[f]] each) weigh feature f's ids in the click and own scores, ``u_click`` and
    ``u_own`` ([num_dense]) the numeric features."""
    w_click: list[np.ndarray]
    w_own: list[np.ndarray]
    u_click: np.ndarray
    u_own: np.ndarray


def _hidden_model(vocab: list[int], num_dense: int, seed: int) -> _HiddenModel:
    wrng = np.random.default_rng([seed, 0])
    w_click = [wrng.normal(0, 1, v) for v in vocab]
    w_own = [wrng.normal(0, 1, v) for v in vocab]
    u_click = wrng.normal(0, 1, num_dense)
    u_own = wrng.normal(0, 1, num_dense)
    return _HiddenModel(w_click, w_own, u_click, u_own)


def _split_table(cfg, hidden: _HiddenModel, vocab: list[int], rho: float, seed: int, rows: int, split_id: int) -> Table:
    """One split of ``rows`` impressions: ids [rows, F], dense [rows, num_dense], labels (click,
    purchase) [rows, 2] and the evaluation-only ``purchase_if_click`` [rows]."""
    rng = np.random.default_rng([seed, 1 + split_id])
    ids = np.empty((rows, len(vocab)), dtype=np.int64)
    s_click = np.zeros(rows)
    s_own = np.zeros(rows)
    for f, v in enumerate(vocab):
        col = (rng.zipf(cfg.zipf_a, rows) - 1) % v
        # a random relabelling so that frequent ids are not simply the small ones
        col = np.random.default_rng([seed, 100 + f]).permutation(v)[col]
        ids[:, f] = col
        s_click += hidden.w_click[f][col]
        s_own += hidden.w_own[f][col]
    dense = rng.normal(0, 1, (rows, cfg.num_dense)).astype(np.float32)
    s_click += dense @ hidden.u_click
    s_own += dense @ hidden.u_own
    s_click, s_own = _standardise(s_click), _standardise(s_own)
    s_cvr = rho * s_click + np.sqrt(1 - rho**2) * s_own
    bias = float(cfg.get("click_bias", 0.0))
    p_click = 1 / (1 + np.exp(-(_logit(cfg.click_rate) + cfg.signal * (s_click + bias * s_cvr))))
    p_cvr = 1 / (1 + np.exp(-(_logit(cfg.cvr_rate) + cfg.signal * s_cvr)))
    click = rng.random(rows) < p_click
    pic = rng.random(rows) < p_cvr
    purchase = click & pic
    labels = np.stack([click, purchase], 1).astype(np.float32)
    return Table(
        torch.from_numpy(ids + NUM_RESERVED_IDS),
        torch.from_numpy(dense),
        torch.from_numpy(labels),
        {"purchase_if_click": torch.from_numpy(pic.astype(np.float32))},
    )


@register("dataset", "synthetic", SyntheticData)
def generate(cfg, seed: int) -> DatasetBundle:
    """Generate train/val/test tables from the config (see the module docstring).

    Raises:
        ConfigError: a size is not positive, a rate is outside (0, 1), or |task_correlation| > 1.
    """
    rho = _check(cfg)
    vocab = [int(v) for v in cfg.vocab_sizes]
    hidden = _hidden_model(vocab, cfg.num_dense, seed)
    schema = FeatureSchema(
        sparse=[SparseFeature(f"c{f}", v + NUM_RESERVED_IDS) for f, v in enumerate(vocab)],
        dense=[DenseFeature(f"d{j}") for j in range(cfg.num_dense)],
        tasks=[Task("click", "click", "binary"), Task("purchase", "purchase", "binary", parent="click")],
        eval_columns=["purchase_if_click"],
    )
    return DatasetBundle(
        schema,
        _split_table(cfg, hidden, vocab, rho, seed, cfg.train_rows, 0),
        _split_table(cfg, hidden, vocab, rho, seed, cfg.val_rows, 1),
        _split_table(cfg, hidden, vocab, rho, seed, cfg.test_rows, 2),
        {"protocol": f"synthetic (seed {seed})"},
    )
