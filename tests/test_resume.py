"""A `ladnn train` process killed after its first epoch checkpoint resumes in the same MLflow run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from ladnn.data.importer import import_items
from ladnn.data.lesions import LESIONS
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import commit_version
from ladnn.tracking.store import mlflow_client
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow

# Images per (split, label): 20 train, 10 validation and 10 test images, half of them COVID.
PER_LABEL = {"train": 10, "val": 5, "test": 5}
EPOCHS = 3
# Small batches give several optimiser steps per epoch, so an epoch lasts long enough for the
# test to kill the process between the first checkpoint and the end of training.
SETTINGS = [
    f"train.epochs={EPOCHS}",
    "train.image_size=64",
    "train.batch_size=4",
    "eval.bootstrap=50",
]
STARTUP_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600


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


def _command(workspace: Workspace, root: Path, *args: str) -> list[str]:
    command = [sys.executable, "-m", "ladnn.cli", "--workspace", str(workspace.root)]
    for setting in [*SETTINGS, f"data.root={root}"]:
        command += ["--set", setting]
    return [*command, "train", *args]


def _wait_for_checkpoint(process: subprocess.Popen, folder: Path) -> Path:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.pt"))
        if found:
            return found[0]
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"training exited with {process.returncode} before a checkpoint:\n{output}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no checkpoint in {folder} after {STARTUP_TIMEOUT_S} s")


def test_killed_training_resumes_same_run(tmp_path, release_dir):
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    _import_small_release(release_dir, root, workspace)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(
        _command(workspace, root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    checkpoint = _wait_for_checkpoint(first, workspace.checkpoints_dir)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    first.stdout.close()

    assert first.returncode == -signal.SIGKILL
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 1 <= state["epoch"] < EPOCHS, "the process finished training before it was killed"
    run_file = checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".run.json")
    interrupted_run = json.loads(run_file.read_text())["run_id"]

    second = subprocess.run(
        _command(workspace, root, "--resume"),
        capture_output=True,
        text=True,
        env=environment,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )

    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    # The log wraps long lines (the checkpoint path) wherever the terminal width falls.
    assert f"after epoch {state['epoch']}" in " ".join(output.split()), output
    finished_run = re.search(r"run ([0-9a-f]{32}): test AUC", output).group(1)
    assert finished_run == interrupted_run
    assert not checkpoint.exists()
    assert not run_file.exists()

    client = mlflow_client(workspace.tracking_uri)
    run = client.get_run(interrupted_run)
    assert run.info.status == "FINISHED"
    epochs = set(range(1, EPOCHS + 1))
    loss_steps = {
        entry.step for entry in client.get_metric_history(interrupted_run, "epoch_train_loss")
    }
    assert loss_steps == epochs
    auc_steps = {
        entry.step for entry in client.get_metric_history(interrupted_run, "epoch_val_auc")
    }
    assert auc_steps == epochs
    assert "test_auc" in run.data.metrics
    experiment_runs = client.search_runs([run.info.experiment_id])
    assert [item.info.run_id for item in experiment_runs] == [interrupted_run]

    mlflow.set_tracking_uri(workspace.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/ladnn/1")
    image = release_dir / "CT_COVID" / "2020.01.24.919183-p27-132.png"
    result = model.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    assert list(result.columns) == ["covid_probability", *LESIONS, "covid_positive"]
    assert 0.0 <= result["covid_probability"].iloc[0] <= 1.0
