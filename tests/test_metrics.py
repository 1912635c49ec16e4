"""mtl_train.metrics: exact AUC, group AUC, logloss and regression metrics."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mtl_train.metrics import binary_metrics, exact_auc, regression_metrics, weighted_auc


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


def test_group_auc_hand_computed_ties_and_one_class_groups():
    from mtl_train.metrics import group_auc

    # group 7: pairs (pos, neg): 0.35 beats 0.1, loses to 0.4; 0.8 beats both -> AUC 3/4, 4 rows
    # group 3: one tie pair -> AUC 1/2, 2 rows; group 9: positives only -> no AUC, left out
    score = np.array([0.1, 0.5, 0.4, 0.2, 0.35, 0.5, 0.8, 0.3], np.float32)
    label = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    group = np.array([7, 3, 7, 9, 7, 3, 7, 9])
    g = group_auc(score, label, group)
    assert g == {"gauc": pytest.approx((4 * 0.75 + 2 * 0.5) / 6, abs=1e-12), "gauc_groups": 2, "gauc_rows": 6}
    # one group is the plain AUC; no group with both classes -> None
    assert group_auc(score, label, np.zeros(8, int))["gauc"] == pytest.approx(binary_metrics(score, label)["auc"])
    assert group_auc(score[3:5], label[3:5], group[3:5])["gauc"] is None
    m = binary_metrics(score, label, group=group)
    assert m["gauc"] == g["gauc"] and m["auc"] == binary_metrics(score, label)["auc"]


def test_group_auc_equals_sklearn_per_group_weighted_by_rows():
    from sklearn.metrics import roc_auc_score

    from mtl_train.metrics import group_auc

    rng = np.random.default_rng(0)
    n = 3000
    group = rng.integers(0, 200, n)
    score = np.round(rng.random(n), 2).astype(np.float32)  # many ties
    label = (rng.random(n) < 0.2 + 0.5 * score).astype(int)
    num = den = 0.0
    for u in np.unique(group):
        m = group == u
        if 0 < label[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(label[m], score[m])
            den += m.sum()
    assert group_auc(score, label, group)["gauc"] == pytest.approx(num / den, abs=1e-12)


def test_binary_metrics_refuses_labels_other_than_0_1_and_scores_outside_0_1():
    from mtl_train.metrics import binary_metrics

    score, label = np.array([0.2, 0.7, 0.4]), np.array([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"label holds 3 values other than 0/1 \(first: 0.2\)"):
        binary_metrics(label * 0 + score, score)  # arguments swapped
    with pytest.raises(ValueError, match=r"label holds 1 values other than 0/1 \(first: nan\)"):
        binary_metrics(score, np.array([0.0, 1.0, np.nan]))  # a missing label: leave the row out
    with pytest.raises(ValueError, match=r"\(val click\): score outside \[0, 1\] \(-1.5 to 0.7\)"):
        binary_metrics(np.array([-1.5, 0.7, 0.4]), label, "click", "val")  # logits
    assert binary_metrics(score, label)["auc"] == 1.0


@pytest.mark.parametrize("n, decimals, dtype", [(2, 1, np.float32), (50, 1, np.float64), (5000, 2, np.float32),
                                                (20000, 6, np.float64), (3000, 20, np.float64)])
def test_exact_auc_equals_sklearn_with_and_without_ties(n, decimals, dtype):
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.2).astype(np.float64)
    y[0], y[1] = 1, 0
    s = np.round(rng.random(n) + 0.3 * y, decimals).astype(dtype)
    assert exact_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert exact_auc(-s, y) == pytest.approx(1 - roc_auc_score(y, s), abs=1e-12)


def test_exact_auc_hand_computed_ties_signs_and_one_class():
    # pairs (pos, neg): 0.35 vs 0.1 win, 0.35 vs 0.4 lose, 0.8 wins both -> 3/4
    assert exact_auc(np.array([0.1, 0.4, 0.35, 0.8], np.float32), np.array([0, 0, 1, 1])) == 0.75
    # all tied: 1/2; -0.0 ties with +0.0; negative scores order correctly
    assert exact_auc(np.zeros(4, np.float32), np.array([0, 1, 0, 1])) == 0.5
    assert exact_auc(np.array([-0.0, 0.0, -3.0, 2.0], np.float32), np.array([1, 0, 0, 1])) == 0.875
    assert exact_auc(np.ones(3), np.ones(3)) is None
    m = binary_metrics(np.array([0.2, 0.7, 0.7, 0.9]), np.array([0, 1, 0, 1]))
    assert m["auc"] == pytest.approx(0.875)


# ---- edge cases the mutation run (docs/RESULTS.md, "Mutation testing") found untested -----------
def test_empty_splits_give_every_key_with_null_values(caplog):
    from mtl_train.metrics import group_auc

    empty = {"auc": None, "logloss": None, "rows": 0, "positives": 0, "calibration": None}
    assert binary_metrics(np.zeros(0), np.zeros(0), "click", "val") == empty
    assert "val click: no rows to evaluate" in caplog.text
    assert binary_metrics(np.zeros(0), np.zeros(0), group=np.zeros(0, int)) == {
        **empty, "gauc": None, "gauc_groups": 0, "gauc_rows": 0}
    assert group_auc(np.zeros(0), np.zeros(0), np.zeros(0, int)) == {"gauc": None, "gauc_groups": 0, "gauc_rows": 0}
    assert regression_metrics(np.zeros(0), np.zeros(0)) == {"mse": None, "r2": None, "rows": 0}


def test_one_row_one_positive_and_all_positive_splits(caplog):
    from mtl_train.metrics import group_auc

    one = binary_metrics(np.array([0.25]), np.array([1.0]), "buy", "test")
    assert one == {"auc": None, "logloss": pytest.approx(-np.log(0.25)), "rows": 1, "positives": 1,
                   "calibration": 0.25}
    assert "test buy: only one class in 1 rows, AUC is undefined (null)" in caplog.text
    assert group_auc(np.array([0.3]), np.array([1]), np.array([4])) == {"gauc": None, "gauc_groups": 0, "gauc_rows": 0}
    m = binary_metrics(np.array([0.9, 0.2, 0.1]), np.array([1, 0, 0]))  # a single positive: AUC defined
    assert m["auc"] == 1.0 and m["calibration"] == pytest.approx(0.4 / (1 / 3))
    allpos = binary_metrics(np.array([0.9, 0.2]), np.array([1, 1]))
    assert allpos["auc"] is None and allpos["calibration"] == pytest.approx(0.55)
    assert binary_metrics(np.array([0.2, 0.3]), np.array([0, 0]))["calibration"] is None  # no positive: undefined


def test_scores_at_0_and_1_are_clipped_and_outside_refused_with_exact_messages():
    # confident mistakes cost -log(EPS) each, not infinity
    m = binary_metrics(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 1.0]))
    assert m["logloss"] == pytest.approx((-2 * np.log(1e-7) - np.log(0.5)) / 3, rel=1e-9)
    assert binary_metrics(np.array([1.0, 0.0]), np.array([1.0, 0.0]))["logloss"] == pytest.approx(-np.log(1 - 1e-7))
    with pytest.raises(ValueError) as e:
        binary_metrics(np.array([1.5, 0.2]), np.array([1.0, 0.0]))
    assert str(e.value) == ("binary_metrics: score outside [0, 1] (0.2 to 1.5); it takes probabilities, "
                            "as binary_metrics(score, label)")
    with pytest.raises(ValueError) as e:
        binary_metrics(np.array([0.5, 0.2]), np.array([2.0, 0.0]), name="click")
    assert str(e.value) == ("binary_metrics (click): label holds 1 values other than 0/1 (first: 2); "
                            "call binary_metrics(score, label) on the rows with a label")
    with pytest.raises(ValueError, match=r"^binary_metrics \(val\): label holds"):
        binary_metrics(np.array([0.5]), np.array([-1.0]), split="val")
    from mtl_train.metrics import exact_auc

    with pytest.raises(ValueError, match=r"^exact_auc: NaN scores$"):
        exact_auc(np.array([0.1, np.nan]), np.array([0, 1]))


def test_boolean_labels_and_half_precision_inputs_are_computed_in_float64():
    m = binary_metrics(np.array([0.8, 0.3, 0.6]), np.array([True, False, False]))
    assert m["positives"] == 1 and m["auc"] == 1.0
    assert m["logloss"] == pytest.approx(-(np.log(0.8) + np.log(0.7) + np.log(0.4)) / 3)
    r = regression_metrics(np.array([300.0, -300.0], np.float16), np.array([-300.0, 300.0], np.float16))
    assert r == {"mse": 360000.0, "r2": pytest.approx(1 - 720000 / 180000), "rows": 2}  # float16 would overflow


def test_r2_of_a_small_variance_target_and_of_a_constant_one():
    r = regression_metrics(np.array([0.1, 0.2, 0.2]), np.array([0.1, 0.2, 0.3]))
    assert r["rows"] == 3 and r["r2"] == pytest.approx(1 - 0.01 / 0.02)
    assert regression_metrics(np.array([1.0, 2.0]), np.array([3.0, 3.0])) == {"mse": 2.5, "r2": None, "rows": 2}


def test_group_auc_leaves_out_negative_only_groups_and_keeps_ties_within_a_group():
    from sklearn.metrics import roc_auc_score

    from mtl_train.metrics import group_auc

    # group 1's highest score equals group 2's lowest: a tie across groups is no tie
    score = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.3])
    label = np.array([0, 1, 0, 1, 0, 0])
    group = np.array([1, 1, 2, 2, 3, 3])  # group 3: negatives only
    assert group_auc(score, label, group) == {"gauc": 1.0, "gauc_groups": 2, "gauc_rows": 4}
    # scores closer than float64's spacing at 1: distinct, not tied
    tiny = np.array([1e-17, 2e-17, 3e-17, 4e-17])
    y = np.array([0, 1, 0, 1])
    assert group_auc(tiny, y, np.zeros(4, int))["gauc"] == pytest.approx(roc_auc_score(y, tiny)) == 0.75


def test_exact_auc_keeps_adjacent_and_tiny_float32_scores_apart():
    from mtl_train.metrics import exact_auc

    a = np.float32(0.5)
    b = np.nextafter(a, np.float32(1))  # one ulp above: no tie
    assert exact_auc(np.array([b, a], np.float32), np.array([1, 0])) == 1.0
    assert exact_auc(np.array([a, b], np.float32), np.array([1, 0])) == 0.0
    tiny = np.array([1e-30, 2e-30, 3e-30, 4e-30], np.float32)  # would tie if shifted by 1.0
    assert exact_auc(tiny, np.array([0, 1, 0, 1])) == 0.75


def test_weighted_auc_and_logloss_hand_computed():
    score = np.array([0.9, 0.8, 0.7, 0.7, 0.2])
    label = np.array([1, 0, 1, 0, 0])
    weight = np.array([1.0, 2.0, 3.0, 1.0, 4.0])
    # W_pos = 1 + 3, W_neg = 2 + 1 + 4. The positive at 0.9 (w 1) beats every negative: 1 * 7;
    # the one at 0.7 (w 3) loses to 0.8, ties 0.7 (half of 3 * 1) and beats 0.2 (3 * 4)
    m = binary_metrics(score, label, weight=weight)
    assert m["auc_weighted"] == pytest.approx((7 + 1.5 + 12) / 28, abs=1e-12)
    ll = -(np.log(0.9) + 2 * np.log(0.2) + 3 * np.log(0.7) + 1 * np.log(0.3) + 4 * np.log(0.8)) / 11
    assert m["logloss_weighted"] == pytest.approx(ll, rel=1e-12) and m["weight_sum"] == 11.0
    # the unweighted metrics beside them are unchanged
    assert {k: m[k] for k in ("auc", "logloss", "rows")} == {k: binary_metrics(score, label)[k]
                                                            for k in ("auc", "logloss", "rows")}
    assert "auc_weighted" not in binary_metrics(score, label)


def test_weighted_auc_with_unit_weights_is_the_exact_auc_and_zero_class_weight_is_null():
    rng = np.random.default_rng(0)
    score = np.round(rng.random(500), 2).astype(np.float32)
    label = (rng.random(500) < 0.3).astype(float)
    assert weighted_auc(score, label, np.ones(500)) == pytest.approx(exact_auc(score, label), abs=1e-12)
    w = rng.random(500)  # integer weights would be row repeats: the same as repeating the rows
    reps = rng.integers(0, 4, 500)
    assert weighted_auc(score, label, reps) == pytest.approx(
        exact_auc(np.repeat(score, reps), np.repeat(label, reps)), abs=1e-12)
    assert weighted_auc(score, label, w) == pytest.approx(roc_auc_score(label, score, sample_weight=w), abs=1e-12)
    assert weighted_auc(score, label, np.where(label == 1, 0.0, 1.0)) is None
    m = binary_metrics(score, label, weight=np.zeros(500))
    assert m["auc_weighted"] is None and m["logloss_weighted"] is None and m["auc"] is not None


def test_weighted_regression_metrics_hand_computed():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), weight=np.array([1.0, 1.0, 2.0]))
    # weighted mean of the target: (1 + 2 + 8) / 4 = 2.75; SST_w = 3.0625 + 0.5625 + 2 * 1.5625
    assert m["mse_weighted"] == pytest.approx(2 / 4) and m["weight_sum"] == 4.0
    assert m["r2_weighted"] == pytest.approx(1 - 2 / 6.75)
    assert m["mse"] == pytest.approx(1 / 3)


def test_degenerate_constant_scores():
    from mtl_train.metrics import binary_metrics, degenerate_scores

    label = np.array([0, 1] * 50)
    score = np.full(100, 0.3)
    m = binary_metrics(score, label)
    assert m["auc"] == 0.5  # every pair tied
    flag, why = degenerate_scores(score, label, "binary", m["auc"])
    assert flag == "constant" and "all 100 scores are 0.3" in why
    assert degenerate_scores(np.full(10, 1e8) + np.arange(10) * 1e-3, np.zeros(10), "regression")[0] == "constant"
    assert degenerate_scores(np.arange(10.0), np.arange(10.0), "regression") is None


def test_degenerate_reversed_scores_and_the_mann_whitney_threshold():
    from mtl_train.metrics import BELOW_CHANCE_Z, binary_metrics, degenerate_scores

    rng = np.random.default_rng(0)
    label = (rng.random(2000) < 0.1).astype(float)
    good = label + rng.normal(0, 1.0, 2000)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    m_good = binary_metrics(sig(good), label)
    assert m_good["auc"] > 0.7 and degenerate_scores(sig(good), label, "binary", m_good["auc"]) is None
    m_rev = binary_metrics(sig(-good), label)  # the same scores reversed: AUC 1 - AUC
    assert m_rev["auc"] == pytest.approx(1 - m_good["auc"])
    flag, why = degenerate_scores(sig(-good), label, "binary", m_rev["auc"])
    assert flag == "below_chance" and "standard errors below 0.5" in why
    # the threshold: P = 100, N = 1000 -> SE_0 = sqrt(1101 / (12 * 100 * 1000)) = 0.030290
    label = np.array([1.0] * 100 + [0.0] * 1000)
    se = np.sqrt(1101 / 1.2e6)
    assert se == pytest.approx(0.030290, abs=1e-6)
    score = np.linspace(0, 1, 1100)
    just_below = 0.5 + BELOW_CHANCE_Z * se - 1e-4
    assert degenerate_scores(score, label, "binary", just_below)[0] == "below_chance"
    assert degenerate_scores(score, label, "binary", just_below + 2e-4) is None
    assert degenerate_scores(score, label, "binary", 0.41) is None  # 0.41 > 0.4064
    # too few positives for the test: never flagged
    few = np.array([1.0] * 9 + [0.0] * 1000)
    assert degenerate_scores(np.linspace(0, 1, 1009), few, "binary", 0.0) is None
