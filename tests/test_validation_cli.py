"""`ladnn validate` and `ladnn quarantine list/release` on real images, through the command line."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ladnn.cli import app
from ladnn.data.batches import read_ladnn_batch
from ladnn.data.operations import import_batch
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.validation import list_quarantine
from ladnn.validation.quarantine import RELEASED_FOLDER
from ladnn.workspace import Workspace

# Variables the CLI sets for the whole process; the fixture restores them after each test.
CLI_ENVIRONMENT = (
    "LADNN_WORKSPACE",
    "PREFECT_HOME",
    "DVC_NO_ANALYTICS",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "MLFLOW_LOGGING_LEVEL",
)


@pytest.fixture
def ladnn(monkeypatch):
    """Run `ladnn ARGS...` in this process and return the result."""
    for name in CLI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)

    return invoke


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_validate_leaves_data_unchanged(ladnn, tmp_path, imported_release, new_data_dir):
    root = tmp_path / "root"
    shutil.copytree(imported_release.data_dir, root / "data")
    workspace = tmp_path / "workspace"
    before = _tree_digest(root / "data")

    result = ladnn(
        "--workspace", workspace, "--set", f"data.root={root}", "validate", new_data_dir / "6.2"
    )

    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    assert "Data Docs:" in result.output
    assert _tree_digest(root / "data") == before
    assert not (workspace / "quarantine").exists() or not any((workspace / "quarantine").iterdir())
    [result_file] = (workspace / "validation").glob("val-ladnn-2020-06-02-*/result.json")
    record = json.loads(result_file.read_text("utf-8"))
    assert record["mode"] == "dry-run"
    assert record["counts"]["validated"] == 35
    assert (result_file.parent / "docs" / "index.html").is_file()


def test_validate_failing_batch_exit_code(ladnn, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for index in range(3):
        (folder / f"slice-{index}.png").write_bytes(b"not a png")

    result = ladnn(
        "--workspace",
        tmp_path / "workspace",
        "--set",
        f"data.root={tmp_path / 'root'}",
        "validate",
        folder,
        "--label",
        "negative",
    )

    assert result.exit_code == 1
    assert "FAILED" in result.output
    assert "rejected_fraction" in result.output
    assert not (tmp_path / "root" / "data").exists()


@dataclass
class QuarantinedDataset:
    root: Path
    workspace: Workspace
    entry_id: str
    file_name: str


@pytest.fixture(scope="module")
def quarantined(tmp_path_factory, new_data_dir) -> QuarantinedDataset:
    """Import 5.16 as v1, then three 6.2 slices and one COVID slice labelled negative with GGO as v2.

    Shared by the tests below, which run in file order: list, release unfixed, release fixed. Only
    the last one changes the dataset.
    """
    base = tmp_path_factory.mktemp("quarantined")
    root = base / "root"
    root.mkdir()
    workspace = Workspace.resolve(base / "workspace").ensure()
    batch_id, items = read_ladnn_batch(new_data_dir / "5.16")
    import_batch(root, workspace, batch_id, items, progress=False)

    batch_id, covid = read_ladnn_batch(new_data_dir / "6.2")
    wrong = covid[3]
    wrong.label = 0
    wrong.lesions = {"GGO": 1}
    result = import_batch(root, workspace, batch_id, covid[:4], progress=False)
    assert [name for name, _ in result.report.rejected] == [wrong.file_name]
    [entry] = list_quarantine(workspace.quarantine_dir)
    return QuarantinedDataset(root, workspace, entry.entry_id, wrong.file_name)


def test_quarantine_list_shows_entry(ladnn, quarantined):
    result = ladnn("--workspace", quarantined.workspace.root, "quarantine", "list")

    assert result.exit_code == 0, result.output
    assert "ladnn-2020-06-02" in result.output
    assert "negative_without_lesion" in result.output
    assert "1 quarantined file(s)" in result.output


def test_quarantine_release_unfixed_fails(ladnn, quarantined):
    result = ladnn(
        "--workspace",
        quarantined.workspace.root,
        "--set",
        f"data.root={quarantined.root}",
        "quarantine",
        "release",
        quarantined.entry_id,
    )
    [entry] = list_quarantine(quarantined.workspace.quarantine_dir)

    assert result.exit_code == 1
    assert "still fails" in result.output
    assert entry.entry_id == quarantined.entry_id
    assert entry.record["checked_at"]
    assert quarantined.file_name not in set(
        DatasetStore(quarantined.root).read_metadata()["file_name"]
    )


def test_quarantine_release_fixed_file(ladnn, quarantined):
    [entry] = list_quarantine(quarantined.workspace.quarantine_dir)
    record = json.loads(entry.reason_path.read_text("utf-8"))
    record["item"]["label"] = 1
    entry.reason_path.write_text(json.dumps(record), encoding="utf-8")

    result = ladnn(
        "--workspace",
        quarantined.workspace.root,
        "--set",
        f"data.root={quarantined.root}",
        "quarantine",
        "release",
        quarantined.entry_id,
    )
    metadata = DatasetStore(quarantined.root).read_metadata().set_index("file_name")
    versions = list_versions(quarantined.workspace)
    released = entry.path.parent / RELEASED_FOLDER / entry.reason_path.name

    assert result.exit_code == 0, result.output
    assert "released" in result.output
    assert metadata.loc[quarantined.file_name, "label"] == 1
    assert metadata.loc[quarantined.file_name, "GGO"] == 1
    assert [version.name for version in versions] == ["v1", "v2", "v3"]
    assert len(versions[-1].validation_ids) == 3
    assert list_quarantine(quarantined.workspace.quarantine_dir) == []
    assert json.loads(released.read_text("utf-8"))["dataset_version"] == "v3"
