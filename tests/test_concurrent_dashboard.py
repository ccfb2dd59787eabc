"""The dashboard's data functions while `ladnn import folder` writes a new version in another process.

Every read must succeed and show a consistent state: a recorded version or the one after it, and
only dataset rows whose image files are complete. A second import started meanwhile is rejected
with a message saying that an import is running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dashboards import data
from ladnn import cli
from ladnn.data.contributions import read_contribution
from ladnn.data.operations import import_batch
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.validation.results import list_results
from ladnn.workspace import Workspace

BASE_SIZE = 8
BATCH_SIZE = 40
IMPORT_TIMEOUT_S = 300


@pytest.fixture
def dataset(tmp_path: Path, release_dir: Path) -> tuple[Path, Workspace, Path, Path]:
    """A data root with version v1 (8 real slices), and two further batches of real slices."""
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[: BASE_SIZE + BATCH_SIZE + 2]
    folders = {
        "base": images[:BASE_SIZE],
        "ward-d": images[BASE_SIZE : BASE_SIZE + BATCH_SIZE],
        "ward-e": images[BASE_SIZE + BATCH_SIZE :],
    }
    for name, chosen in folders.items():
        (tmp_path / name).mkdir()
        for path in chosen:
            shutil.copy(path, tmp_path / name / path.name)
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    batch_id, items = read_contribution(tmp_path / "base", label=1)
    import_batch(root, workspace, batch_id, items, progress=False)
    return root, workspace, tmp_path / "ward-d", tmp_path / "ward-e"


def _import_holds_lock(workspace: Workspace, batch_id: str) -> bool:
    """Check that the import has validated its batch but not yet recorded its version: it then
    holds the dataset lock for the seconds that `dvc add` and `dvc push` take."""
    validated = any(
        result.batch_id == batch_id for result in list_results(workspace.validation_dir)
    )
    return validated and len(list_versions(workspace)) == 1


def _read_dashboard(workspace: Workspace, store: DatasetStore) -> list[str]:
    """Call the data functions of the Data page; return what is inconsistent."""
    problems = []
    growth = data.dataset_growth(workspace)
    if growth["version"].tolist() not in (["v1"], ["v1", "v2"]):
        problems.append(f"versions {growth['version'].tolist()}")
    if growth["images"].tolist() not in ([BASE_SIZE], [BASE_SIZE, BASE_SIZE + BATCH_SIZE]):
        problems.append(f"version sizes {growth['images'].tolist()}")
    gallery = data.gallery_frame(store)
    if len(gallery) not in (BASE_SIZE, BASE_SIZE + BATCH_SIZE):
        problems.append(f"{len(gallery)} dataset rows")
    for image_id in gallery["image_id"]:
        with Image.open(store.image_path(image_id)) as image:
            image.load()
    data.validation_frame(workspace)
    data.quarantine_frame(workspace)
    return problems


def test_dashboard_reads_during_import(dataset):
    root, workspace, batch, second_batch = dataset
    store = DatasetStore(root)
    command = [
        sys.executable,
        "-m",
        "ladnn.cli",
        "--workspace",
        str(workspace.root),
        "--set",
        f"data.root={root}",
        "import",
        "folder",
        str(batch),
        "--label",
        "covid",
    ]
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("LADNN_WORKSPACE", "LADNN_SERVERS")
    }
    saved_environment = dict(os.environ)
    process = subprocess.Popen(
        command, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    reads, problems, second_output = 0, [], None
    deadline = time.monotonic() + IMPORT_TIMEOUT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            problems += _read_dashboard(workspace, store)
            reads += 1
            if second_output is None and _import_holds_lock(workspace, f"contrib-{batch.name}"):
                second = CliRunner().invoke(
                    cli.app,
                    [
                        "--workspace",
                        str(workspace.root),
                        "--set",
                        f"data.root={root}",
                        "import",
                        "folder",
                        str(second_batch),
                        "--label",
                        "covid",
                    ],
                )
                second_output = (second.exit_code, second.output)
        output = process.communicate(timeout=IMPORT_TIMEOUT_S)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.environ.clear()
        os.environ.update(saved_environment)

    assert process.returncode == 0, output
    assert problems == []
    assert reads >= 3, f"only {reads} dashboard reads while the import ran"
    assert _read_dashboard(workspace, store) == []
    assert [version.n_images for version in list_versions(workspace)] == [
        BASE_SIZE,
        BASE_SIZE + BATCH_SIZE,
    ]
    assert second_output is not None, "no second import was started while the lock was held"
    exit_code, second_text = second_output
    assert exit_code == 1
    assert "another import" in " ".join(second_text.split())
    assert "is running" in " ".join(second_text.split())
