"""Classification metrics checked against scikit-learn and brute-force searches over thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ladnn.evaluation.metrics import (
    auc_with_ci,
    bootstrap_ci,
    choose_threshold,
    patient_resamples,
    resample_weights,
    roc_auc,
    sensitivity_at_specificity,
    threshold_metric_intervals,
    threshold_metrics,
    weighted_auc,
    weighted_threshold_metrics,
)

SIZES = [12, 57, 300]
SEEDS = [0, 1, 2]


def labelled_scores(size: int, seed: int, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Draw 0/1 labels with both classes and scores in [0, 1] that lean towards the label.

    Rounding to few `decimals` makes tied scores across both classes common.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    scores = np.round(0.3 * labels + 0.7 * rng.random(size), decimals)
    return labels, scores


def youden_index(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    return predicted[labels == 1].mean() - predicted[labels == 0].mean()


def brute_sensitivity_at_specificity(
    labels: np.ndarray, scores: np.ndarray, specificity: float
) -> float:
    """Return the best sensitivity over every threshold whose specificity reaches `specificity`."""
    best = 0.0
    for threshold in np.r_[np.unique(scores), np.inf]:
        predicted = scores >= threshold
        reached = 1.0 - predicted[labels == 0].mean()
        if reached >= specificity - 1e-12:
            best = max(best, predicted[labels == 1].mean())
    return best


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
def test_roc_auc_matches_sklearn(size: int, seed: int):
    labels, scores = labelled_scores(size, seed, decimals=2)

    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("size", SIZES)
def test_threshold_metrics_match_sklearn(size: int, threshold: float):
    labels, scores = labelled_scores(size, seed=size)
    predicted = (scores >= threshold).astype(int)

    metrics = threshold_metrics(labels, scores, threshold)

    # threshold_metrics returns NaN for a ratio with a zero denominator, so sklearn must too.
    undefined = np.nan
    expected_sensitivity = recall_score(labels, predicted, zero_division=undefined)
    expected_specificity = recall_score(labels, predicted, pos_label=0, zero_division=undefined)
    expected_precision = precision_score(labels, predicted, zero_division=undefined)
    expected_f1 = f1_score(labels, predicted, zero_division=undefined)
    assert metrics["sensitivity"] == pytest.approx(expected_sensitivity, nan_ok=True)
    assert metrics["specificity"] == pytest.approx(expected_specificity, nan_ok=True)
    assert metrics["precision"] == pytest.approx(expected_precision, nan_ok=True)
    assert metrics["f1"] == pytest.approx(expected_f1, nan_ok=True)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == size


def test_threshold_metrics_no_positive_calls():
    metrics = threshold_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)

    assert math.isnan(metrics["precision"])
    assert metrics["sensitivity"] == 0.0
    assert metrics["specificity"] == 1.0


@pytest.mark.parametrize("label", [0, 1])
def test_roc_auc_single_class_warns(label: int):
    with pytest.warns(UserWarning, match="single class"):
        value = roc_auc([label] * 4, [0.1, 0.4, 0.6, 0.9])

    assert math.isnan(value)


@pytest.mark.parametrize("decimals", [1, 6], ids=["tied scores", "distinct scores"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
def test_youden_threshold_maximises_index(size: int, seed: int, decimals: int):
    labels, scores = labelled_scores(size, seed, decimals)
    candidates = np.r_[np.unique(scores), np.inf]
    best = max(youden_index(labels, scores, threshold) for threshold in candidates)

    chosen = choose_threshold(labels, scores, "youden")

    assert youden_index(labels, scores, chosen) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize(("target", "expected"), [(0.75, 0.5), (1.0, 0.3), (0.25, 0.9)])
def test_sensitivity_threshold_hand_case(target: float, expected: float):
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.4, 0.6, 0.3, 0.5, 0.7, 0.9]

    assert choose_threshold(labels, scores, "sensitivity", target) == expected


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
def test_sensitivity_threshold_highest_reaching(size: int, seed: int, target: float):
    labels, scores = labelled_scores(size, seed, 2)
    chosen = choose_threshold(labels, scores, "sensitivity", target)

    def sensitivity(threshold: float) -> float:
        return threshold_metrics(labels, scores, threshold)["sensitivity"]

    assert sensitivity(chosen) >= target
    higher = np.unique(scores)[np.unique(scores) > chosen]
    assert all(sensitivity(threshold) < target for threshold in higher)


def test_choose_threshold_fixed_rule():
    assert choose_threshold([0, 1], [0.9, 0.1], "fixed") == 0.5


def test_choose_threshold_unknown_rule_raises():
    with pytest.raises(ValueError, match="unknown threshold rule 'median'"):
        choose_threshold([0, 1], [0.1, 0.9], "median")


def test_choose_threshold_single_class_warns():
    with pytest.warns(UserWarning, match="single class"):
        threshold = choose_threshold([1, 1, 1], [0.2, 0.5, 0.8])

    assert threshold == 0.5


@pytest.mark.parametrize("specificity", [0.5, 0.8, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("decimals", [1, 6], ids=["tied scores", "distinct scores"])
@pytest.mark.parametrize("size", SIZES)
def test_sensitivity_at_specificity_brute_force(size: int, decimals: int, specificity: float):
    labels, scores = labelled_scores(size, seed=size + 7, decimals=decimals)

    value = sensitivity_at_specificity(labels, scores, specificity)

    expected = brute_sensitivity_at_specificity(labels, scores, specificity)
    assert value == pytest.approx(expected, abs=1e-12)


def test_sensitivity_at_specificity_tied_pairs():
    # Each threshold admits one positive and one negative, so allowing two false positives
    # (specificity 1/3) reaches two of the three positives.
    labels = [1, 0, 1, 0, 1, 0]
    scores = [0.9, 0.9, 0.8, 0.8, 0.7, 0.7]

    assert sensitivity_at_specificity(labels, scores, 1 / 3) == pytest.approx(2 / 3)


def test_sensitivity_at_specificity_single_class():
    assert math.isnan(sensitivity_at_specificity([0, 0, 0], [0.1, 0.2, 0.3], 0.9))


def separable_scores(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw labels and noisy scores with a ROC AUC of roughly 0.8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    scores = 1.0 / (1.0 + np.exp(-(1.2 * labels + rng.normal(size=size))))
    return labels, scores


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_ci_contains_point(seed: int):
    labels, scores = separable_scores(200, seed)

    auc, low, high = auc_with_ci(labels, scores, n_resamples=300, seed=seed)

    assert auc == pytest.approx(roc_auc_score(labels, scores))
    assert low < auc
    assert auc < high


def test_auc_ci_narrows_with_data():
    small = auc_with_ci(*separable_scores(100, seed=3), n_resamples=300)
    large = auc_with_ci(*separable_scores(2000, seed=3), n_resamples=300)

    assert large[2] - large[1] < small[2] - small[1]


def test_auc_ci_groups_resample_patients():
    labels, scores = separable_scores(150, seed=4)
    doubled_labels = np.repeat(labels, 2)
    doubled_scores = np.repeat(scores, 2)
    patients = np.repeat(np.arange(150), 2)

    original = auc_with_ci(labels, scores, n_resamples=300, seed=0)
    grouped = auc_with_ci(doubled_labels, doubled_scores, patients, n_resamples=300, seed=0)
    rows = auc_with_ci(doubled_labels, doubled_scores, n_resamples=300, seed=0)

    # Two identical rows per patient carry no more information than one row, so resampling
    # patients reproduces the interval of the original data, while resampling rows narrows it.
    assert grouped == pytest.approx(original, abs=1e-12)
    assert grouped[2] - grouped[1] > rows[2] - rows[1]


def test_bootstrap_ci_single_class_is_nan():
    def statistic(labels: np.ndarray, scores: np.ndarray) -> float:
        return roc_auc(labels, scores)

    low, high = bootstrap_ci(statistic, [1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], n_resamples=20)

    assert math.isnan(low)
    assert math.isnan(high)


@pytest.mark.parametrize("name", ["sensitivity", "specificity", "precision", "f1", "accuracy"])
def test_threshold_intervals_match_bootstrap(name: str):
    """One pass over the resamples gives each metric the interval of its own bootstrap."""
    labels, scores = separable_scores(120, seed=5)
    patients = np.arange(120) // 3

    def statistic(y: np.ndarray, p: np.ndarray) -> float:
        return threshold_metrics(y, p, 0.5)[name]

    intervals = threshold_metric_intervals(labels, scores, 0.5, patients, n_resamples=200, seed=7)
    expected = bootstrap_ci(statistic, labels, scores, patients, n_resamples=200, seed=7)

    assert intervals[name] == pytest.approx(expected, abs=1e-12)
    assert intervals[name][0] <= threshold_metrics(labels, scores, 0.5)[name] <= intervals[name][1]


def _tied_scores(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores rounded to one decimal so that many tie, and patients of 1 to 3 rows."""
    labels, scores = separable_scores(size, seed)
    patients = np.sort(np.random.default_rng(seed).integers(0, size // 2, size))
    return labels, np.round(scores, 1), patients


def test_resample_weights_count_rows():
    labels, _, patients = _tied_scores(90, seed=11)

    weights = resample_weights(len(labels), patients, 50, seed=3)
    resamples = list(patient_resamples(len(labels), patients, 50, seed=3))

    assert weights.shape == (50, 90)
    for counts, index in zip(weights, resamples, strict=True):
        assert np.array_equal(counts, np.bincount(index, minlength=90))


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_auc_matches_sklearn(seed: int):
    labels, scores, patients = _tied_scores(80, seed)
    weights = resample_weights(len(labels), patients, 200, seed)

    fast = weighted_auc(labels, scores, weights)

    expected = [
        roc_auc_score(labels[index], scores[index])
        if len(np.unique(labels[index])) == 2
        else np.nan
        for index in patient_resamples(len(labels), patients, 200, seed)
    ]
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-12)


def test_weighted_auc_single_class_nan():
    weights = np.array([[1, 1, 0, 0], [0, 0, 2, 1], [1, 0, 0, 1]])

    aucs = weighted_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], weights)

    assert math.isnan(aucs[0])
    assert math.isnan(aucs[1])
    assert aucs[2] == pytest.approx(1.0)


def test_weighted_rates_match_resamples():
    labels, scores, patients = _tied_scores(60, seed=2)
    weights = resample_weights(len(labels), patients, 100, seed=9)

    fast = weighted_threshold_metrics(labels, scores, 0.5, weights)

    for row, index in enumerate(patient_resamples(len(labels), patients, 100, seed=9)):
        expected = threshold_metrics(labels[index], scores[index], 0.5)
        for name in ("sensitivity", "specificity", "precision", "f1", "accuracy"):
            assert fast[name][row] == pytest.approx(expected[name], nan_ok=True, abs=1e-12), name


def test_auc_interval_matches_bootstrap():
    labels, scores, patients = _tied_scores(120, seed=8)

    def statistic(y: np.ndarray, p: np.ndarray) -> float:
        return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan

    _, low, high = auc_with_ci(labels, scores, patients, n_resamples=300, seed=4)
    expected = bootstrap_ci(statistic, labels, scores, patients, n_resamples=300, seed=4)

    assert (low, high) == pytest.approx(expected, abs=1e-12)
