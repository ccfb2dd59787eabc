"""DeLong's test for two correlated AUCs, checked against scikit-learn and a paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from ladnn.evaluation.delong import delong_test


def correlated_scores(
    n_per_class: int, seed: int, signal_a: float = 1.0, signal_b: float = 0.7
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw labels and two score arrays that share a per-image component, as two models on the
    same images do. Model A separates the classes by `signal_a`, model B by `signal_b`."""
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n_per_class)
    shared = rng.normal(size=y.size)
    a = signal_a * y + shared + 0.7 * rng.normal(size=y.size)
    b = signal_b * y + shared + 0.7 * rng.normal(size=y.size)
    return y, a, b


def bootstrap_difference_sd(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int
) -> float:
    """Standard deviation of AUC(a) - AUC(b) over paired resamples stratified by class.

    Stratifying keeps the class counts fixed, as DeLong's variance assumes. Each resample's AUCs
    come from the Mann-Whitney rank sum, computed for all resamples at once.
    """
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(y == 1)
    negatives = np.flatnonzero(y == 0)
    m, n = positives.size, negatives.size
    index = np.hstack(
        [
            rng.choice(positives, (n_resamples, m), replace=True),
            rng.choice(negatives, (n_resamples, n), replace=True),
        ]
    )

    def resampled_auc(scores: np.ndarray) -> np.ndarray:
        ranks = rankdata(scores[index], axis=1)
        return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)

    return float(np.std(resampled_auc(a) - resampled_auc(b), ddof=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucs_match_sklearn(seed):
    y, a, b = correlated_scores(60, seed)
    result = delong_test(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert result.difference == pytest.approx(result.auc_a - result.auc_b, abs=1e-12)


def test_aucs_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], 50)
    a = np.round(0.3 * y + rng.random(y.size), 1)
    b = np.round(0.2 * y + rng.random(y.size), 1)
    result = delong_test(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)


def test_standard_error_matches_bootstrap():
    y, a, b = correlated_scores(150, seed=7)
    result = delong_test(y, a, b)
    bootstrap_sd = bootstrap_difference_sd(y, a, b, n_resamples=2000, seed=11)
    assert result.standard_error > 0
    assert abs(result.standard_error - bootstrap_sd) / bootstrap_sd < 0.2


def test_identical_scores_give_p_one():
    y, a, _ = correlated_scores(40, seed=0)
    result = delong_test(y, a, a.copy())
    assert result.p_value == 1.0
    assert result.z == 0.0
    assert result.standard_error == 0.0
    assert result.difference == 0.0


def test_swap_flips_z_keeps_p():
    y, a, b = correlated_scores(80, seed=4)
    forward = delong_test(y, a, b)
    backward = delong_test(y, b, a)
    assert forward.z != 0
    assert backward.z == pytest.approx(-forward.z, rel=1e-12)
    assert backward.p_value == pytest.approx(forward.p_value, rel=1e-12)
    assert backward.standard_error == pytest.approx(forward.standard_error, rel=1e-12)


def test_better_model_significant():
    y, a, b = correlated_scores(200, seed=5, signal_a=2.5, signal_b=0.5)
    result = delong_test(y, a, b)
    assert y.size == 400
    assert result.auc_a > result.auc_b
    assert result.z > 0
    assert result.p_value < 0.01


def test_p_value_in_unit_interval():
    y, a, b = correlated_scores(30, seed=6, signal_a=0.8, signal_b=0.8)
    result = delong_test(y, a, b)
    assert 0.0 <= result.p_value <= 1.0


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_raises(label):
    y = np.full(10, label)
    scores = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match="both classes"):
        delong_test(y, scores, scores[::-1])


def test_shape_mismatch_raises():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="must be equal 1-D"):
        delong_test(y, np.zeros(4), np.zeros(3))
