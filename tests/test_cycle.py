"""The whole cycle as a Prefect flow on the real release, with a tiny training profile."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from ladnn.data.lesions import LESIONS
from ladnn.tracking.store import mlflow_client
from pipelines.cycle import cycle_flow

TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=64",
    "eval.bootstrap=50",
]


@pytest.fixture(scope="module")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def two_cycles(prefect_harness, tmp_path_factory, release_dir):
    root = tmp_path_factory.mktemp("cycle-root")
    workspace = root / "workspace"
    overrides = [*TINY, f"data.root={root}", f"data.release={release_dir}"]
    first = cycle_flow(overrides=overrides, workspace=str(workspace), progress=False)
    second = cycle_flow(overrides=overrides, workspace=str(workspace), progress=False)
    return root, first, second


@pytest.mark.slow
def test_cycle_creates_dataset_version(two_cycles):
    root, first, _ = two_cycles
    assert first.dataset_version == "v1"
    assert first.dataset_created
    assert first.n_images == 746
    assert (root / "data.dvc").is_file()


@pytest.mark.slow
def test_cycle_reuses_unchanged_version(two_cycles):
    _, first, second = two_cycles
    assert second.dataset_version == first.dataset_version
    assert not second.dataset_created
    assert second.images_added == 0


@pytest.mark.slow
def test_cycle_logs_run_with_dataset(two_cycles):
    _, first, _ = two_cycles
    mlflow.set_tracking_uri(first.tracking_uri)
    run = MlflowClient().get_run(first.run_id)
    assert run.data.tags["dataset_version"] == "v1"
    assert run.data.tags["pretrained"] == "true"
    assert run.data.tags["validation_result_id"].startswith("val-")
    for name in (
        "test_auc",
        "test_sensitivity",
        "test_specificity",
        "test_precision",
        "test_f1",
        "test_accuracy",
    ):
        assert name in run.data.metrics, name
    config = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{first.run_id}/config.yaml"))
    assert config["train"]["epochs"] == 1
    # The dataset folder the run read, written out even where the setting was left empty.
    assert (Path(config["data"]["root"]) / "data" / "metadata.csv").is_file()


@pytest.mark.slow
def test_cycle_registers_pending_versions(two_cycles):
    _, first, second = two_cycles
    client = mlflow_client(first.tracking_uri)
    version = client.get_model_version("ladnn", first.model_version)
    assert version.tags["dataset_version"] == "v1"
    assert version.tags["review_state"] == "pending"
    assert not version.aliases
    assert int(second.model_version) == int(first.model_version) + 1


@pytest.mark.slow
def test_registered_model_predicts(two_cycles, release_dir):
    _, first, _ = two_cycles
    mlflow.set_tracking_uri(first.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/ladnn/{first.model_version}")
    files = [release_dir / "CT_COVID" / "2020.01.24.919183-p27-132.png"]
    files += sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[:1]
    result = model.predict(pd.DataFrame({"image": [path.read_bytes() for path in files]}))
    assert list(result.columns) == ["covid_probability", *LESIONS, "covid_positive"]
    assert len(result) == 2
    assert result["covid_probability"].between(0, 1).all()
    assert result[list(LESIONS)].notna().all().all()
