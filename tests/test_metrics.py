import numpy as np
import pytest

from mtl_train.metrics import binary_metrics, regression_metrics


def test_auc_hand_computed():
    # positives score 0.8, 0.4, 0.35(tie with a negative); negatives 0.7, 0.35, 0.1
    score = np.array([0.8, 0.4, 0.35, 0.7, 0.35, 0.1])
    label = np.array([1, 1, 1, 0, 0, 0])
    # pairs (pos > neg): 0.8 beats 3; 0.4 beats 0.35, 0.1 (2) and loses to 0.7;
    # 0.35 beats 0.1, ties 0.35 (1/2), loses to 0.7 -> (3 + 2 + 1.5) / 9
    m = binary_metrics(score, label)
    assert m["auc"] == pytest.approx(6.5 / 9, abs=1e-12)
    assert m["rows"] == 6 and m["positives"] == 3
    expected = -np.mean(label * np.log(score) + (1 - label) * np.log(1 - score))
    assert m["logloss"] == pytest.approx(expected, rel=1e-9)
    assert m["calibration"] == pytest.approx(score.mean() / 0.5)


def test_auc_single_class_is_null(caplog):
    m = binary_metrics(np.array([0.2, 0.3]), np.array([0, 0]), name="purchase", split="val")
    assert m["auc"] is None
    assert m["positives"] == 0
    assert "AUC is undefined" in caplog.text


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mse"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(1 - 1 / (14 / 3))
