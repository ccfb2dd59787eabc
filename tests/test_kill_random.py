"""SIGKILL at random moments: `ladnn import folder` and `ladnn train` killed after a random delay.

After each kill, every recorded dataset version must be intact (its `versions.json` record, its DVC
objects and its git tag `data/vN` agree), every checkpoint and registered model must load, and the
next command must complete. The delay of each trial counts from the command's first output line. It
is drawn uniformly between 0 and the time an uninterrupted run takes from there, measured first,
from a seeded generator. A failure message names the seed and the delay.

The default suite runs a few trials. The marker `long` selects the many-trial runs:
`.venv/bin/python -m pytest -m long tests/test_kill_random.py`, with `LADNN_KILL_IMPORT_TRIALS`
(default 30) and `LADNN_KILL_TRAIN_TRIALS` (default 8) trials and `LADNN_KILL_SEED` as the seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from ladnn.config import load_config
from ladnn.data.contributions import read_contribution
from ladnn.data.importer import import_items
from ladnn.data.operations import import_batch, read_version_metadata
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import commit_version, list_versions
from ladnn.evaluation.registered import load_model
from ladnn.tracking.store import mlflow_client
from ladnn.workspace import Workspace

BASE_SIZE = 8
BATCH_SIZE = 30
SEED = int(os.environ.get("LADNN_KILL_SEED", "20240607"))
LONG_IMPORT_TRIALS = int(os.environ.get("LADNN_KILL_IMPORT_TRIALS", "30"))
LONG_TRAIN_TRIALS = int(os.environ.get("LADNN_KILL_TRAIN_TRIALS", "8"))
COMMAND_TIMEOUT_S = 600
# Images per (split, label) of the training dataset: 16 train, 8 validation and 8 test images.
PER_LABEL = {"train": 8, "val": 4, "test": 4}
TRAIN_SETTINGS = [
    "train.epochs=3",
    "train.image_size=64",
    "train.batch_size=4",
    "eval.bootstrap=20",
    "model.backbone=resnet18",
    "model.pretrained=false",
]


def _environment() -> dict[str, str]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("LADNN_WORKSPACE", "LADNN_SERVERS", "PREFECT_HOME", "PREFECT_API_URL"):
        environment.pop(name, None)
    return environment


def _ladnn(workspace: Path, root: Path, *args: str, settings: list[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "ladnn.cli", "--workspace", str(workspace)]
    for setting in [*settings, f"data.root={root}"]:
        command += ["--set", setting]
    return [*command, *args]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `command` in its own process group, so one signal reaches its DVC and git children."""
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_output(process: subprocess.Popen, log: Path) -> float:
    """Return the monotonic time of the command's first output line (it has finished starting up)."""
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if log.stat().st_size > 0:
            break
        time.sleep(0.02)
    return time.monotonic()


def _measure(command: list[str], cwd: Path, log: Path) -> float:
    """Run `command` to the end; return the seconds from its first output line to its exit."""
    process = _start(command, cwd, log)
    started = _wait_for_output(process, log)
    code = process.wait(timeout=COMMAND_TIMEOUT_S)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    return time.monotonic() - started


def _run_killed(command: list[str], cwd: Path, delay: float, log: Path) -> int | None:
    """Start `command`, SIGKILL its process group `delay` seconds after its first output line;
    return the exit code when the command ended first, else None.

    The delay counts from the first output, not from the start, because starting Python and
    importing the libraries takes most of a short command's time on a busy machine.
    """
    process = _start(command, cwd, log)
    try:
        _wait_for_output(process, log)
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        return None
    finally:
        # The group is gone once its last process has exited and been reaped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def _init_git(root: Path) -> None:
    _git(root, "init", "-q")
    _git(root, "config", "user.name", "ladnn test")
    _git(root, "config", "user.email", "ladnn@localhost")
    (root / "README.md").write_text("data root of a kill test\n")
    _git(root, "add", "README.md")
    _git(root, "commit", "-q", "-m", "Start")


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)


# --- imports ---


@dataclass(frozen=True)
class ImportBase:
    root: Path
    workspace: Path
    batch: Path
    # Seconds of one uninterrupted `ladnn import folder` of the batch, from its first output line.
    duration: float


@pytest.fixture(scope="module")
def import_base(tmp_path_factory, release_dir: Path) -> ImportBase:
    """Build a git-tracked data root with version v1 (8 real slices) and a batch of 30 more.

    The batch is imported once on a copy to measure how long an import takes."""
    images = sorted((release_dir / "CT_NonCOVID").glob("*.png"))[: BASE_SIZE + BATCH_SIZE]
    base = tmp_path_factory.mktemp("kill-import")
    folders = {"base": images[:BASE_SIZE], "ward-c": images[BASE_SIZE:]}
    for name, chosen in folders.items():
        (base / name).mkdir()
        for path in chosen:
            shutil.copy(path, base / name / path.name)
    root = base / "root"
    root.mkdir()
    _init_git(root)
    workspace = Workspace.resolve(base / "workspace").ensure()
    batch_id, items = read_contribution(base / "base", label=0)
    assert import_batch(root, workspace, batch_id, items, progress=False).version.name == "v1"

    trial = base / "measure"
    _copy_tree(root, trial / "root")
    _copy_tree(workspace.root, trial / "workspace")
    command = _ladnn(
        trial / "workspace",
        trial / "root",
        "import",
        "folder",
        str(base / "ward-c"),
        "--label",
        "negative",
    )
    duration = _measure(command, trial / "root", base / "measure.log")
    return ImportBase(root, workspace.root, base / "ward-c", duration)


def check_versions(root: Path, workspace: Workspace) -> list[str]:
    """Return what is wrong with the recorded versions: record, DVC objects, git tag and data."""
    problems = []
    for version in list_versions(workspace):
        try:
            metadata = read_version_metadata(workspace, version)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
            problems.append(f"{version.name}: DVC objects unreadable: {err}")
            continue
        if len(metadata) != version.n_images:
            problems.append(f"{version.name}: {len(metadata)} rows, recorded {version.n_images}")
        shown = _git(root, "show", f"{version.git_tag}:data.dvc")
        if version.git_tag is None or shown.returncode != 0:
            problems.append(f"{version.name}: git tag {version.git_tag} missing: {shown.stderr}")
        elif yaml.safe_load(shown.stdout)["outs"][0]["md5"] != version.md5:
            problems.append(f"{version.name}: tag {version.git_tag} points to another data.dvc")
    store = DatasetStore(root)
    for image_id in store.read_metadata()["image_id"]:
        if not store.image_path(image_id).is_file():
            problems.append(f"data/metadata.csv lists {image_id}, whose image file is missing")
    return problems


def kill_import_trial(import_base: ImportBase, folder: Path, rng: random.Random) -> str:
    """Run one trial; return a description of the first problem found, or "" when all is well."""
    root, workspace_root = folder / "root", folder / "workspace"
    _copy_tree(import_base.root, root)
    _copy_tree(import_base.workspace, workspace_root)
    workspace = Workspace.resolve(workspace_root)
    delay = rng.uniform(0.0, import_base.duration)
    command = _ladnn(
        workspace_root, root, "import", "folder", str(import_base.batch), "--label", "negative"
    )
    where = f"seed {SEED}, delay {delay:.2f} s of {import_base.duration:.1f} s"

    code = _run_killed(command, root, delay, folder / "killed.log")
    if code not in (None, 0):
        return f"{where}: the import failed before the kill: {(folder / 'killed.log').read_text()}"
    problems = check_versions(root, workspace)
    if problems:
        return f"{where}: after the kill: {problems}"

    finished = _run(command, root)
    if finished.returncode != 0:
        return (
            f"{where}: the next import failed: {finished.stdout[-3000:]}{finished.stderr[-3000:]}"
        )
    problems = check_versions(root, workspace)
    versions = list_versions(workspace)
    if problems:
        return f"{where}: after the next import: {problems}"
    if versions[-1].n_images != BASE_SIZE + BATCH_SIZE or versions[0].n_images != BASE_SIZE:
        return f"{where}: versions after the next import: {[v.n_images for v in versions]}"
    leftovers = list((root / "data").glob(".*.tmp")) + list((root / ".git").glob("*.lock"))
    if leftovers:
        return f"{where}: files left after the next import: {leftovers}"
    return ""


def test_tag_of_unrecorded_version_moved(import_base, tmp_path, monkeypatch):
    """A kill between `git tag data/v2` and the `versions.json` record leaves a tag that the next
    version, holding more data, takes over."""
    from ladnn.data import versioning

    root, workspace_root = tmp_path / "root", tmp_path / "workspace"
    _copy_tree(import_base.root, root)
    _copy_tree(import_base.workspace, workspace_root)
    workspace = Workspace.resolve(workspace_root)
    files = sorted(import_base.batch.iterdir())
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, chosen in ((first, files[:10]), (second, files[10:])):
        folder.mkdir()
        for path in chosen:
            shutil.copy(path, folder / path.name)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the version was recorded")

    batch_id, items = read_contribution(first, label=0)
    with monkeypatch.context() as patched:
        patched.setattr(versioning, "_save_versions", killed)
        with pytest.raises(KeyboardInterrupt):
            import_batch(root, workspace, batch_id, items, progress=False)
    stale = _git(root, "show", "data/v2:data.dvc").stdout
    batch_id, items = read_contribution(second, label=0)
    result = import_batch(root, workspace, batch_id, items, progress=False)

    assert [version.name for version in list_versions(workspace)] == ["v1", "v2"]
    assert result.version.n_images == BASE_SIZE + len(files)
    assert yaml.safe_load(stale)["outs"][0]["md5"] != result.version.md5
    assert check_versions(root, workspace) == []


def run_import_trials(import_base: ImportBase, tmp_path: Path, trials: int) -> list[str]:
    rng = random.Random(SEED)
    failures = []
    for trial in range(trials):
        problem = kill_import_trial(import_base, tmp_path / f"trial-{trial}", rng)
        if problem:
            failures.append(f"trial {trial}: {problem}")
    return failures


def test_killed_imports_recover(import_base, tmp_path):
    failures = run_import_trials(import_base, tmp_path, trials=2)

    assert failures == []


@pytest.mark.long
def test_killed_imports_recover_many(import_base, tmp_path):
    started = time.monotonic()
    failures = run_import_trials(import_base, tmp_path, trials=LONG_IMPORT_TRIALS)

    print(
        f"import kill trials: {LONG_IMPORT_TRIALS}, failures: {len(failures)}, "
        f"{time.monotonic() - started:.0f} s, seed {SEED}"
    )
    assert failures == []


# --- training ---


@dataclass(frozen=True)
class TrainBase:
    root: Path
    workspace: Path
    # Seconds of one uninterrupted `ladnn train`, from its first output line.
    duration: float


@pytest.fixture(scope="module")
def train_base(tmp_path_factory, release_dir: Path) -> TrainBase:
    """A dataset of 32 release slices and a workspace with one model trained by `ladnn train`."""
    base = tmp_path_factory.mktemp("kill-train")
    root = base / "root"
    root.mkdir()
    workspace = Workspace.resolve(base / "workspace").ensure()
    picked: dict[tuple[str, int], int] = {}
    chosen = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if picked.get(key, 0) < PER_LABEL[item.split]:
            picked[key] = picked.get(key, 0) + 1
            chosen.append(item)
    import_items(chosen, DatasetStore(root), RELEASE_BATCH_ID, progress=False)
    commit_version(root, workspace, RELEASE_BATCH_ID)

    command = _ladnn(workspace.root, root, "train", settings=TRAIN_SETTINGS)
    duration = _measure(command, root, base / "measure.log")
    return TrainBase(root, workspace.root, duration)


def check_models(root: Path, workspace: Workspace) -> list[str]:
    """Return what is wrong with the checkpoints and the registered models of `workspace`."""
    problems = []
    for checkpoint in workspace.checkpoints_dir.glob("*.pt"):
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # any failure to load is the finding
            problems.append(f"checkpoint {checkpoint.name} does not load: {err}")
            continue
        if not 1 <= state["epoch"] <= 3:
            problems.append(f"checkpoint {checkpoint.name} has epoch {state['epoch']}")
    cfg = load_config(overrides=[*TRAIN_SETTINGS, f"data.root={root}"])
    client = mlflow_client(workspace.tracking_uri)
    for version in client.search_model_versions(f"name = '{cfg.tracking.registered_model}'"):
        try:
            loaded = load_model(cfg, workspace, version=str(version.version))
        except Exception as err:  # any failure to load is the finding
            problems.append(f"model version {version.version} does not load: {err}")
            continue
        if loaded.model is None:
            problems.append(f"model version {version.version} has no network")
    return problems


def kill_train_trial(train_base: TrainBase, folder: Path, rng: random.Random) -> str:
    root, workspace_root = folder / "root", folder / "workspace"
    _copy_tree(train_base.root, root)
    _copy_tree(train_base.workspace, workspace_root)
    workspace = Workspace.resolve(workspace_root)
    delay = rng.uniform(0.0, train_base.duration)
    where = f"seed {SEED}, delay {delay:.1f} s of {train_base.duration:.1f} s"
    command = _ladnn(workspace_root, root, "train", "--resume", settings=TRAIN_SETTINGS)

    code = _run_killed(command, root, delay, folder / "killed.log")
    if code not in (None, 0):
        return f"{where}: training failed before the kill: {(folder / 'killed.log').read_text()}"
    problems = check_models(root, workspace)
    if problems:
        return f"{where}: after the kill: {problems}"

    finished = _run(command, root)
    if finished.returncode != 0:
        return (
            f"{where}: the next training failed: {finished.stdout[-3000:]}{finished.stderr[-3000:]}"
        )
    problems = check_models(root, workspace)
    if problems:
        return f"{where}: after the next training: {problems}"
    if list(workspace.checkpoints_dir.glob("*.pt")):
        return f"{where}: checkpoints left after a finished run"
    return ""


def run_train_trials(train_base: TrainBase, tmp_path: Path, trials: int) -> list[str]:
    rng = random.Random(SEED)
    failures = []
    for trial in range(trials):
        problem = kill_train_trial(train_base, tmp_path / f"trial-{trial}", rng)
        if problem:
            failures.append(f"trial {trial}: {problem}")
    return failures


@pytest.mark.slow
def test_killed_training_recovers(train_base, tmp_path):
    failures = run_train_trials(train_base, tmp_path, trials=1)

    assert failures == []


@pytest.mark.long
def test_killed_training_recovers_many(train_base, tmp_path):
    started = time.monotonic()
    failures = run_train_trials(train_base, tmp_path, trials=LONG_TRAIN_TRIALS)

    print(
        f"training kill trials: {LONG_TRAIN_TRIALS}, failures: {len(failures)}, "
        f"{time.monotonic() - started:.0f} s, seed {SEED}"
    )
    assert failures == []
