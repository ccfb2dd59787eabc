"""The `ladnn` command line: imports, dataset versions and diffs, run through Typer's CliRunner."""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ladnn.cli import app


def _cli_env(workspace: Path) -> dict[str, str]:
    """Return the environment of one CLI invocation.

    The CLI sets these variables for the rest of the process, and CliRunner restores every variable
    passed to it after the invocation. A wide terminal keeps Rich from wrapping lines.
    """
    return {
        "LADNN_WORKSPACE": str(workspace),
        "PREFECT_HOME": str(workspace / "prefect"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "COLUMNS": "200",
    }


# Slices of new-data/6.2 from two different figures, uploaded as single images.
UPLOADED_SLICES = (
    "6.2_covidct/10.1148.radiol.2020200642-1.png",
    "6.2_covidct/10.1148.radiol.2020200642-24.png",
)


@dataclass
class Session:
    root: Path
    workspace: Path
    # Command name -> (exit code, output with stdout and stderr).
    results: dict[str, tuple[int, str]]
    text_upload: Path

    def invoke(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            app, ["--workspace", str(self.workspace), *args], env=_cli_env(self.workspace)
        )
        return result.exit_code, result.output


@pytest.fixture(scope="module")
def session(tmp_path_factory, release_dir: Path, new_data_dir: Path):
    """Run the import commands once, in order, from a fresh root as the working directory."""
    base = tmp_path_factory.mktemp("cli")
    root = base / "root"
    root.mkdir()
    text_upload = base / "notes.png"
    text_upload.write_text("scan notes, not an image\n", encoding="utf-8")
    # Two real slices that the dataset lacks travel with the text file, because the gate fails a
    # batch in which more than half of the files are rejected.
    image_uploads = _extract_slices(new_data_dir / "6.2" / "6.2_covidct.zip", UPLOADED_SLICES, base)
    root_logger = logging.getLogger()
    saved_handlers, saved_level = list(root_logger.handlers), root_logger.level

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        state = Session(root, base / "workspace", {}, text_upload)
        commands = {
            "import release": ["import", "release", str(release_dir)],
            "import ladnn-batch": ["import", "ladnn-batch", str(new_data_dir / "5.16")],
            "data versions": ["data", "versions"],
            "data diff": ["data", "diff", "v1", "v2"],
            "data diff --files": ["data", "diff", "v1", "v2", "--files"],
            "import upload": [
                "import",
                "upload",
                *(str(path) for path in image_uploads),
                str(text_upload),
                "--label",
                "covid",
            ],
        }
        for name, args in commands.items():
            state.results[name] = state.invoke(*args)
        yield state

    # The CLI replaces the root logger's handlers with a Rich handler.
    root_logger.handlers[:] = saved_handlers
    root_logger.setLevel(saved_level)


def _extract_slices(archive: Path, names: tuple[str, ...], folder: Path) -> list[Path]:
    """Write the named members of a real class zip as single files in `folder`."""
    paths = []
    with zipfile.ZipFile(archive) as opened:
        for name in names:
            path = folder / Path(name).name
            path.write_bytes(opened.read(name))
            paths.append(path)
    return paths


def _table_row(output: str, first_cell: str) -> list[str]:
    """Return the cells of the Rich table row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{output}")


# --- importing ---


@pytest.mark.parametrize(
    "command",
    ["import release", "import ladnn-batch", "data versions", "data diff", "import upload"],
)
def test_command_exit_code(session, command):
    exit_code, output = session.results[command]

    assert exit_code == 0, output


def test_import_release_output(session):
    _, output = session.results["import release"]

    assert "dataset version v1 (new): 746 images, 349 COVID / 397 negative" in output


def test_import_batch_output(session):
    _, output = session.results["import ladnn-batch"]

    assert "batch ladnn-2020-05-16: 9 added" in output
    assert "dataset version v2" in output
    assert "755 images" in output


def test_import_uses_working_directory(session):
    metadata = session.root / "data" / "metadata.csv"

    assert metadata.is_file()
    assert (session.root / "data.dvc").is_file()


def test_import_upload_rejected(session):
    _, output = session.results["import upload"]

    assert "rejected" in output
    assert "notes.png" in output
    assert "batch upload-" in output
    assert "2 added" in output
    assert "dataset version v3 (new): 757 images" in output


def test_import_upload_quarantined(session):
    stored = list((session.workspace / "quarantine").glob("upload-*/*-notes.png"))

    assert len(stored) == 1
    assert stored[0].read_bytes() == session.text_upload.read_bytes()


def test_import_upload_invalid_label(session):
    exit_code, output = session.invoke(
        "import", "upload", str(session.text_upload), "--label", "pneumonia"
    )

    assert exit_code == 1
    assert "invalid label 'pneumonia'" in output


def test_import_folder_without_label(session, release_dir, tmp_path):
    folder = tmp_path / "ward-c"
    folder.mkdir()
    image = sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[0]
    shutil.copy(image, folder / "slice-1.jpg")

    exit_code, output = session.invoke("import", "folder", str(folder))

    assert exit_code == 1
    assert "no label" in output
    assert "slice-1.jpg" in output


# --- inspecting versions ---


@pytest.mark.parametrize(
    ("version", "images", "covid", "negative"),
    [("v1", "746", "349", "397"), ("v2", "755", "349", "406")],
)
def test_data_versions_rows(session, version, images, covid, negative):
    _, output = session.results["data versions"]

    cells = _table_row(output, version)

    assert cells[2] == images
    assert cells[3] == covid
    assert cells[4] == negative


def test_data_versions_no_v3(session):
    _, output = session.results["data versions"]

    assert "│ v3 " not in output


def test_data_diff_summary(session):
    _, output = session.results["data diff"]

    assert "9 added" in output
    assert "v1 -> v2: 9 added, 0 removed, 0 changed" in output


def test_data_diff_files(session):
    _, output = session.results["data diff --files"]
    added = [line for line in output.splitlines() if line.startswith("+ ")]

    assert len(added) == 9
    for line in added:
        assert line.startswith("+ 5.16_nocovidct.zip/5.16_nocovidct/"), line


def test_data_diff_unknown_version(session):
    exit_code, output = session.invoke("data", "diff", "v1", "v9")

    assert exit_code == 1
    assert "unknown dataset version 'v9'" in output
    assert "['v1', 'v2', 'v3']" in output
    assert "Traceback" not in output


def test_data_diff_empty_workspace(tmp_path):
    workspace = tmp_path / "workspace"

    result = CliRunner().invoke(
        app, ["--workspace", str(workspace), "data", "diff", "v1", "v2"], env=_cli_env(workspace)
    )

    assert result.exit_code == 1
    assert "no dataset version is recorded" in result.output


# --- help ---


def _command_help(output: str, command: str) -> str | None:
    """Return the help text beside `command` in a Rich `Commands` panel, or None if absent."""
    match = re.search(rf"^│ {re.escape(command)}\s+(\S.*?)\s*│$", output, re.MULTILINE)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def help_output(tmp_path_factory) -> str:
    workspace = tmp_path_factory.mktemp("cli-help") / "workspace"
    result = CliRunner().invoke(app, ["--help"], env=_cli_env(workspace))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["cycle", "train", "models", "import", "data", "config"])
def test_help_lists_command(help_output, command):
    help_text = _command_help(help_output, command)

    assert help_text is not None, help_output
    assert len(help_text.split()) >= 3, help_text


@pytest.mark.parametrize(
    ("group", "command"),
    [
        ("import", "release"),
        ("import", "ladnn-batch"),
        ("import", "folder"),
        ("import", "upload"),
        ("data", "diff"),
        ("data", "versions"),
    ],
)
def test_help_lists_subcommand(tmp_path, group, command):
    workspace = tmp_path / "workspace"
    result = CliRunner().invoke(app, [group, "--help"], env=_cli_env(workspace))

    help_text = _command_help(result.output, command)

    assert result.exit_code == 0
    assert help_text is not None, result.output


def test_help_summary_of_every_command_one_line():
    """`ladnn --help` shows each command's first help paragraph; one line keeps the list flat."""
    import typer

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        summary = (command.help or "").strip().split("\n\n")[0]

        assert summary, name
        assert "\n" not in summary, (name, summary)
