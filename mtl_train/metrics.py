"""Per-task evaluation metrics, exact over a whole split (never averaged over batches)."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import roc_auc_score

log = logging.getLogger(__name__)

EPS = 1e-7


def binary_metrics(score: np.ndarray, label: np.ndarray, name: str = "", split: str = "") -> dict:
    """Exact ROC AUC, logloss and calibration of probabilities ``score`` against 0/1 ``label``.

    AUC is the Mann-Whitney statistic over every (positive, negative) pair of the split, ties
    counted one half (``sklearn.metrics.roc_auc_score``). Where the split holds one class only,
    AUC is undefined: it is reported as None (null in JSON) with a warning, never 0 or 0.5.

    Args:
        score: float [N] predicted probabilities in [0, 1].
        label: float or int [N] with values 0/1.

    Returns:
        {"auc": float | None, "logloss": float (natural log, mean over rows), "rows": int,
         "positives": int, "calibration": mean(score) / mean(label) or None}
    """
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    rows, pos = int(label.size), int(label.sum())
    if rows == 0:
        log.warning("%s %s: no rows to evaluate", split, name)
        return {"auc": None, "logloss": None, "rows": 0, "positives": 0, "calibration": None}
    if 0 < pos < rows:
        auc = float(roc_auc_score(label, score))
    else:
        auc = None
        log.warning("%s %s: only one class in %d rows, AUC is undefined (null)", split, name, rows)
    p = np.clip(score, EPS, 1 - EPS)
    logloss = float(-np.mean(label * np.log(p) + (1 - label) * np.log1p(-p)))
    calibration = float(score.mean() / label.mean()) if pos > 0 else None
    return {"auc": auc, "logloss": logloss, "rows": rows, "positives": pos, "calibration": calibration}


def regression_metrics(pred: np.ndarray, target: np.ndarray, name: str = "", split: str = "") -> dict:
    """Mean squared error and coefficient of determination R^2 = 1 - SSE / SST.

    Returns {"mse": float, "r2": float | None (None when the target is constant), "rows": int}.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    rows = int(target.size)
    if rows == 0:
        return {"mse": None, "r2": None, "rows": 0}
    sse = float(np.sum((pred - target) ** 2))
    sst = float(np.sum((target - target.mean()) ** 2))
    return {"mse": sse / rows, "r2": (1 - sse / sst) if sst > 0 else None, "rows": rows}
