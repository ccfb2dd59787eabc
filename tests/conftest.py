"""Shared fixtures: the real datasets beside the checkout, and a release imported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from ladnn.data.importer import import_items
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests send traffic only to this machine: no Prefect or DVC usage statistics.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _forget_mlflow_registry():
    """Clear the model registry URI a test set through `configure_mlflow`.

    `mlflow.set_registry_uri` keeps the URI for the whole process and exports it as
    `MLFLOW_REGISTRY_URI`, so later tests' clients and subprocesses would read another test's
    registry.
    """
    yield
    mlflow.set_registry_uri("")
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


def _datasets_dir() -> Path:
    configured = os.environ.get("LADNN_DATASETS")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = _datasets_dir()
    if not (path / "covid-ct" / "CT_COVID").is_dir():
        pytest.fail(
            f"real datasets not found at {path}: set LADNN_DATASETS to the folder holding covid-ct/ "
            "and new-data/"
        )
    return path


@pytest.fixture(scope="session")
def release_dir(datasets_dir: Path) -> Path:
    return datasets_dir / "covid-ct"


@pytest.fixture(scope="session")
def new_data_dir(datasets_dir: Path) -> Path:
    return datasets_dir / "new-data"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "workspace").ensure()


@pytest.fixture(scope="session")
def imported_release(tmp_path_factory, release_dir: Path) -> DatasetStore:
    """The whole COVID-CT release imported once into a session folder; tests must not change it."""
    root = tmp_path_factory.mktemp("release-root")
    store = DatasetStore(root)
    import_items(read_release(release_dir), store, RELEASE_BATCH_ID, progress=False)
    return store
