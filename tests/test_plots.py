"""Evaluation figures: PNG files that render the same in worker threads as one after another."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ladnn.data.lesions import LESIONS
from ladnn.evaluation.calibration import save_reliability_diagram
from ladnn.evaluation.plots import save_evaluation_plots, save_lesion_pair_plot


def _scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 2, 120)
    probabilities = np.clip(0.35 * labels[:, None] + generator.random((120, 6)) * 0.65, 0, 1)
    return labels, probabilities


def _render(seed: int, folder: Path) -> list[Path]:
    labels, probabilities = _scores(seed)
    paths = save_evaluation_plots(labels, probabilities[:, 0], 0.5, folder, "test")
    paths.append(save_reliability_diagram(labels, probabilities[:, 0], folder / "reliability.png"))
    paths.append(save_lesion_pair_plot(labels, probabilities[:, 1:], LESIONS, folder / "pairs.png"))
    return paths


def test_figures_are_pngs(tmp_path):
    paths = _render(0, tmp_path)
    assert [path.name for path in paths] == [
        "test_roc.png",
        "test_pr.png",
        "test_confusion.png",
        "reliability.png",
        "pairs.png",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) > 200, path.name


def test_figures_render_the_same_in_threads(tmp_path):
    """A training run draws its figures in a thread; four at once match four drawn in turn."""
    expected = {
        seed: [path.read_bytes() for path in _render(seed, tmp_path / f"serial-{seed}")]
        for seed in range(4)
    }
    with ThreadPoolExecutor(4) as pool:
        futures = {
            seed: pool.submit(_render, seed, tmp_path / f"thread-{seed}") for seed in range(4)
        }
        rendered = {seed: future.result() for seed, future in futures.items()}
    for seed, paths in rendered.items():
        assert [path.read_bytes() for path in paths] == expected[seed], seed
    # Different scores draw different figures, so the comparison above can fail.
    assert expected[0][0] != expected[1][0]


def test_pair_plot_rejects_mismatched_shapes(tmp_path):
    labels, probabilities = _scores(0)
    with pytest.raises(ValueError, match="do not match"):
        save_lesion_pair_plot(labels[:10], probabilities[:, 1:], LESIONS, tmp_path / "pairs.png")
