"""The benchmark scripts in bench/: their helpers, and the quick mode of the diagnosis benchmark.

The full benchmarks run outside the test suite (see docs/benchmarks.md); nothing here checks a
time, only that the scripts run and report consistent figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH))

import import_scaling  # noqa: E402
import train_throughput  # noqa: E402


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_training_flops_about_three_forwards(backbone):
    counted = train_throughput.training_flops_per_image(backbone, batch_size=2, image_size=64)

    # Forward, input gradient and weight gradient cost about one forward each; only the first
    # convolution skips its input gradient.
    ratio = counted["training"] / counted["forward"]
    assert counted["forward"] > 0
    assert 2.5 < ratio <= 3.0


def test_trainer_side_starts_from_a_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(train_throughput, "WEIGHTS_DIR", tmp_path)

    cfg = train_throughput.trainer_config(
        "resnet18", epochs=1, overrides=("train.freeze_stages=2",)
    )

    # From a file the trainer treats the backbone as pretrained, so the frozen stages apply.
    saved = torch.load(cfg.model.weights_file, weights_only=True)
    assert Path(cfg.model.weights_file).parent == tmp_path
    assert "layer1.0.conv1.weight" in saved
    assert "fc.weight" not in saved
    assert cfg.train.freeze_stages == 2


def test_reference_loss_matches_vectorised_formula():
    torch.manual_seed(0)
    output = torch.rand(6, 6) * 0.98 + 0.01
    target = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]] * 2, dtype=torch.float32
    )

    loss = train_throughput.reference_loss(output, target)

    elements = torch.nn.functional.binary_cross_entropy(output, target, reduction="none")
    with_lesions = (target[:, 1:] > 0).any(dim=1, keepdim=True).float()
    mask = torch.cat([torch.ones(6, 1), with_lesions.expand(-1, 5)], dim=1)
    weights = torch.tensor([5.0, 1, 1, 1, 1, 1])
    expected = (elements * mask * weights).mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-6)


def test_augmented_copy_differs_and_decodes(release_dir):
    from ladnn.data.images import normalise_image

    original = sorted((release_dir / "CT_COVID").iterdir())[0]
    data = original.read_bytes()

    first = import_scaling.augment(data, seed=1)
    second = import_scaling.augment(data, seed=2)

    ids = {normalise_image(blob, "copy").image_id for blob in (data, first, second)}
    assert len(ids) == 3
    assert import_scaling.augment(data, seed=1) == first
    assert hashlib.sha256(first).digest() != hashlib.sha256(second).digest()


def test_diagnose_latency_quick(tmp_path, datasets_dir):
    output = tmp_path / "diagnose.json"

    subprocess.run(
        [
            sys.executable,
            str(BENCH / "diagnose_latency.py"),
            "--quick",
            "--calls",
            "3",
            "--datasets",
            str(datasets_dir),
            "--output",
            str(output),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )

    result = json.loads(output.read_text())
    assert result["machine"]["nproc"] >= 1
    assert result["diagnose"]["calls"] == 3
    assert 0 < result["diagnose"]["p50_ms"] <= result["diagnose"]["p95_ms"]
    assert 0 < result["gradcam"]["p50_ms"] <= result["gradcam"]["p95_ms"]
    assert result["batched"]["median_images_per_s"] > 0
    assert result["target_p50_met"] == (result["diagnose"]["p50_ms"] < 50.0)


def test_dvc_setup_writes_same_config(tmp_path):
    output = tmp_path / "dvc_setup.json"

    subprocess.run(
        [sys.executable, str(BENCH / "dvc_setup.py"), "--quick", "--output", str(output)],
        check=True,
        capture_output=True,
        timeout=300,
    )

    result = json.loads(output.read_text())
    assert result["same_config_written"]
    assert set(result["seconds"]) == {"three dvc processes", "config API in process"}
    assert all(len(values) == 1 for values in result["seconds"].values())


def _log_predictions_run(
    client, experiment_id: str, scores: dict[str, list[float]], labels: list[int]
) -> str:
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as scratch:
        for split, values in scores.items():
            frame = pd.DataFrame(
                {
                    "image_id": [f"{split}-{index}" for index in range(len(values))],
                    "file_name": [f"{index}.png" for index in range(len(values))],
                    "patient_id": [f"patient-{index // 2}" for index in range(len(values))],
                    "label": labels,
                    "covid_probability": values,
                }
            )
            path = Path(scratch) / f"predictions_{split}.csv"
            frame.to_csv(path, index=False)
            client.log_artifact(run.info.run_id, str(path), "predictions")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_average_runs_scores_mean_probability(tmp_path):
    from sklearn.metrics import roc_auc_score

    from ladnn.tracking.store import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment_id = client.create_experiment(
        "average", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    labels = [0, 1, 0, 1, 1, 0, 1, 0]
    first = [0.1, 0.4, 0.35, 0.8, 0.7, 0.6, 0.2, 0.3]
    second = [0.3, 0.9, 0.1, 0.6, 0.4, 0.2, 0.7, 0.5]
    runs = [
        _log_predictions_run(client, experiment_id, {"val": scores, "test": scores}, labels)
        for scores in (first, second)
    ]
    output = tmp_path / "average.json"

    subprocess.run(
        [sys.executable, str(BENCH / "average_runs.py"), "--tracking-uri", uri, *runs]
        + ["--bootstrap", "50", "--output", str(output)],
        check=True,
        capture_output=True,
        timeout=300,
    )

    result = json.loads(output.read_text())
    mean = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
    assert result["test_auc"] == pytest.approx(roc_auc_score(labels, mean))
    assert [member["test_auc"] for member in result["members"]] == pytest.approx(
        [roc_auc_score(labels, first), roc_auc_score(labels, second)]
    )
    assert result["test_images"] == len(labels)
    assert result["test_auc_ci"][0] <= result["test_auc"] <= result["test_auc_ci"][1]
