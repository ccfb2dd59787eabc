"""`ladnn diagnose`, `explain` and `evaluate` on a tiny model trained through `ladnn train`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from ladnn.cli import app
from ladnn.data.importer import import_items
from ladnn.data.lesions import LESIONS
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import commit_version
from ladnn.models.ladnn import OUTPUT_NAMES
from ladnn.tracking.store import mlflow_client
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow

# Images per (split, label): 20 train, 10 validation and 10 test images, half of them COVID.
PER_LABEL = {"train": 10, "val": 5, "test": 5}
TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=32",
    "eval.bootstrap=50",
]
PNG_IMAGE = "CT_COVID/2020.01.24.919183-p27-132.png"
JPEG_IMAGE = "CT_NonCOVID/0.jpg"


def _import_small_release(release_dir: Path, root: Path, workspace: Workspace) -> None:
    """Import the first images of each split and label of the release and record version v1."""
    picked: dict[tuple[str, int], int] = {}
    chosen = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if picked.get(key, 0) < PER_LABEL[item.split]:
            picked[key] = picked.get(key, 0) + 1
            chosen.append(item)
    import_items(chosen, DatasetStore(root), RELEASE_BATCH_ID, progress=False)
    commit_version(root, workspace, RELEASE_BATCH_ID)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, release_dir):
    """A data root with 40 release images, a workspace and one model trained by `ladnn train`."""
    root = tmp_path_factory.mktemp("cli-model")
    workspace = Workspace.resolve(root / "workspace").ensure()
    _import_small_release(release_dir, root, workspace)
    options = ["--workspace", str(workspace.root)]
    for override in [*TINY, f"data.root={root}"]:
        options += ["--set", override]

    saved_environment = dict(os.environ)
    result = CliRunner().invoke(app, [*options, "train"])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"run ([0-9a-f]{32})", result.output).group(1)
    yield root, workspace, options, run_id
    os.environ.clear()
    os.environ.update(saved_environment)


def _invoke(options: list[str], *args: str):
    return CliRunner().invoke(app, [*options, *args])


def test_diagnose_reports_probabilities_and_bad_file(trained, release_dir, tmp_path):
    _, _, options, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes((release_dir / PNG_IMAGE).read_bytes()[:1500])
    png, jpeg = release_dir / PNG_IMAGE, release_dir / JPEG_IMAGE

    result = _invoke(options, "diagnose", str(png), str(broken), str(jpeg))

    assert result.exit_code == 1, result.output
    assert "ladnn version 1 (latest version; no champion alias is set)" in result.output
    lines = result.output.splitlines()
    scored = [line for line in lines if "COVID-19 probability" in line]
    assert len(scored) == 2, result.output
    assert scored[0].startswith(str(png))
    assert scored[1].startswith(str(jpeg))
    for line in scored:
        assert re.search(r"COVID-19 probability [01]\.\d{3} -> (COVID-19 positive|negative)", line)
        for lesion in LESIONS:
            assert re.search(rf"{lesion} [01]\.\d{{3}}", line), (lesion, line)
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [
        f"error: {broken}: image data is corrupt or truncated (image file is truncated)"
    ]
    assert "Traceback" not in result.output
    assert "1 of 3 image(s) failed" in result.output


def test_diagnose_empty_and_non_image_files(trained, tmp_path):
    _, _, options, _ = trained
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"

    result = _invoke(options, "diagnose", str(empty), str(text), str(missing))

    assert result.exit_code == 1
    assert f"error: {empty}: file is empty (0 bytes)" in result.output
    assert f"error: {text}: not an image file of a known format" in result.output
    assert f"error: {missing}: cannot read file (No such file or directory)" in result.output
    assert "Traceback" not in result.output


def test_diagnose_all_good_exits_zero(trained, release_dir):
    _, _, options, _ = trained

    result = _invoke(options, "diagnose", str(release_dir / JPEG_IMAGE))

    assert result.exit_code == 0, result.output
    assert "error:" not in result.output


def test_diagnose_prefers_champion(trained, release_dir):
    _, workspace, options, _ = trained
    client = mlflow_client(workspace.tracking_uri)
    client.set_registered_model_alias("ladnn", "champion", "1")
    try:
        result = _invoke(options, "diagnose", str(release_dir / JPEG_IMAGE))
    finally:
        client.delete_registered_model_alias("ladnn", "champion")

    assert result.exit_code == 0, result.output
    assert "ladnn version 1 (alias champion)" in result.output


def test_diagnose_unknown_version_fails_cleanly(trained, release_dir):
    _, _, options, _ = trained

    result = _invoke(options, "diagnose", "--model-version", "99", str(release_dir / JPEG_IMAGE))

    assert result.exit_code == 1
    assert "model 'ladnn' has no version 99" in result.output
    assert "Traceback" not in result.output


def test_explain_writes_overlays(trained, release_dir, tmp_path):
    _, _, options, _ = trained
    image = release_dir / PNG_IMAGE
    output = tmp_path / "overlays"

    result = _invoke(options, "explain", str(image), "--output", str(output))

    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in output.iterdir())
    assert written == sorted(f"{name}.png" for name in OUTPUT_NAMES)
    with Image.open(image) as original:
        size = original.size
    for path in output.iterdir():
        with Image.open(path) as overlay:
            assert overlay.size == size, path.name
    for name in OUTPUT_NAMES:
        assert re.search(rf"{name}\s+probability [01]\.\d{{3}}", result.output), name


def test_explain_bad_file_fails_cleanly(trained, tmp_path):
    _, _, options, _ = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")

    result = _invoke(options, "explain", str(broken), "--output", str(tmp_path / "out"))

    assert result.exit_code == 1
    assert str(broken) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_test_split(trained):
    _, _, options, _ = trained

    result = _invoke(options, "evaluate", "--split", "test")

    assert result.exit_code == 0, result.output
    assert "split test of the current data" in result.output
    assert "10 images (5 COVID, 5 negative)" in result.output
    assert re.search(r"AUC \(95% CI\)\s*│\s*\d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\)", result.output)
    assert "ECE (10 bins)" in result.output
    assert "Metrics per slice" in result.output
    assert re.search(r"batch_id\s+covid-ct-release\s+10\s+5\s+5", result.output)


def test_evaluate_run_id_and_dataset_version(trained):
    _, _, options, run_id = trained

    result = _invoke(
        options, "evaluate", "--run-id", run_id, "--split", "all", "--dataset-version", "v1"
    )

    assert result.exit_code == 0, result.output
    assert f"model of run {run_id}" in result.output
    assert "split all of the dataset version v1: 40 images (20 COVID, 20 negative)" in (
        result.output.replace("\n", " ")
    )


def test_evaluate_rejects_bad_options(trained):
    _, _, options, _ = trained

    bad_split = _invoke(options, "evaluate", "--split", "holdout")
    bad_version = _invoke(options, "evaluate", "--dataset-version", "v7")
    both = _invoke(options, "evaluate", "--model-version", "1", "--run-id", "abc")
    unknown_run = _invoke(options, "evaluate", "--run-id", "0" * 32)

    assert bad_split.exit_code == 1
    assert "invalid split 'holdout'" in bad_split.output
    assert bad_version.exit_code == 1
    assert "unknown dataset version 'v7'" in bad_version.output
    assert both.exit_code == 1
    assert "not both" in both.output
    assert unknown_run.exit_code == 1
    assert "no MLflow run" in unknown_run.output


def test_training_logs_evaluation_artifacts(trained):
    _, workspace, _, run_id = trained
    mlflow.set_tracking_uri(workspace.tracking_uri)
    run = MlflowClient().get_run(run_id)

    assert "test_ece" in run.data.metrics
    assert "val_ece" in run.data.metrics
    assert "gradcam_error" not in run.data.tags
    folder = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(workspace.root / "check"))
    )
    for name in ("val_reliability.png", "test_reliability.png", "test_lesion_pairs.png"):
        assert (folder / "plots" / name).is_file(), name
    slices = pd.read_csv(folder / "slices" / "slices_test.csv")
    assert list(slices.columns) == [
        "slice",
        "value",
        "n",
        "positives",
        "negatives",
        "auc",
        "sensitivity",
        "specificity",
        "accuracy",
    ]
    assert slices.loc[slices["slice"] == "source", "n"].sum() == 10
    assert (folder / "slices" / "slices_val.csv").is_file()
    explained = sorted(path.name for path in (folder / "gradcam").iterdir())
    assert [name.split("-")[0] for name in explained] == ["covid", "covid", "negative", "negative"]
    for image_folder in (folder / "gradcam").iterdir():
        assert sorted(path.name for path in image_folder.iterdir()) == sorted(
            f"{name}.png" for name in OUTPUT_NAMES
        )
