"""Expected calibration error and reliability diagrams of the COVID-19 probability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve

from ladnn.evaluation.calibration import (
    expected_calibration_error,
    reliability_bins,
    save_reliability_diagram,
)
from ladnn.evaluation.report import evaluate_probabilities


def test_ece_matches_hand_computation():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.05, 0.15, 0.15, 0.85, 0.95, 0.95]
    # Bins [0, .1): gap |0 - .05| = .05 over 1 image; [.1, .2): |.5 - .15| = .35 over 2;
    # [.8, .9): |1 - .85| = .15 over 1; [.9, 1]: |.5 - .95| = .45 over 2.
    expected = (1 * 0.05 + 2 * 0.35 + 1 * 0.15 + 2 * 0.45) / 6

    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert expected == pytest.approx(0.3)


def test_ece_with_five_bins():
    y = [0, 1, 1, 0]
    p = [0.1, 0.3, 0.5, 0.9]
    # Bins of width .2: [0, .2) |0 - .1|, [.2, .4) |1 - .3|, [.4, .6) |1 - .5|, [.8, 1] |0 - .9|.
    expected = (0.1 + 0.7 + 0.5 + 0.9) / 4

    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(expected)


def test_ece_zero_when_calibrated_exactly():
    y = [0] + [1, 0, 0, 0] + [1, 0] + [1, 1, 1, 0] + [1]
    p = [0.0] + [0.25] * 4 + [0.5] * 2 + [0.75] * 4 + [1.0]

    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_near_zero_for_sampled_labels():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)

    assert expected_calibration_error(y, p) < 0.01


def test_ece_large_for_overconfident_scores():
    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.99, 0.98)

    assert expected_calibration_error(y, p) == pytest.approx(0.985 - 0.5, abs=1e-9)


def test_bins_agree_with_sklearn():
    rng = np.random.default_rng(1)
    p = np.round(rng.uniform(0, 1, 500), 1)  # many values on bin edges
    y = (rng.uniform(0, 1, p.size) < p).astype(int)

    bins = reliability_bins(y, p)
    filled = bins[bins["count"] > 0]
    fraction, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")

    np.testing.assert_allclose(filled["fraction_positive"], fraction)
    np.testing.assert_allclose(filled["mean_probability"], mean)
    assert int(bins["count"].sum()) == p.size


def test_bins_closed_on_the_right():
    bins = reliability_bins([0, 1, 1], [0.0, 0.5, 1.0])

    assert bins.loc[0, "count"] == 1
    assert bins.loc[4, "count"] == 1  # 0.5 lies in (0.4, 0.5]
    assert bins.loc[5, "count"] == 0
    assert bins.loc[9, "count"] == 1


def test_bins_keep_empty_bins():
    bins = reliability_bins([0, 1], [0.05, 1.0], n_bins=4)

    assert list(bins["count"]) == [1, 0, 0, 1]
    assert np.isnan(bins.loc[1, "mean_probability"])
    assert bins.loc[3, "fraction_positive"] == 1.0


def test_ece_nan_without_samples():
    assert np.isnan(expected_calibration_error([], []))


def test_ece_rejects_probability_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.5, 1.5])


def test_ece_rejects_zero_bins():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)


def test_reliability_diagram_is_png(tmp_path):
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 300)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)

    path = save_reliability_diagram(y, p, tmp_path / "plots" / "test_reliability.png")

    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100
        assert image.height > 100


def test_evaluation_reports_ece():
    frame = pd.DataFrame(
        {
            "label": [0, 0, 1, 1, 1, 0],
            "patient_id": ["a", "b", "c", "d", "e", "f"],
        }
    )
    probabilities = np.array([[0.05], [0.15], [0.15], [0.85], [0.95], [0.95]])

    result = evaluate_probabilities(
        frame, probabilities, threshold=0.5, split="test", n_resamples=20
    )

    assert result.metrics["ece"] == pytest.approx(0.3)
    assert result.flat()["test_ece"] == pytest.approx(0.3)
