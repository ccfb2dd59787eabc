"""Atomicity of imports: a killed import leaves the last version intact, and imports exclude each
other through the dataset lock.

Each crash test starts from a copy of a dataset whose v1 contains 10 real images, runs an import of
40 more images in a subprocess and kills its whole process group with SIGKILL at a chosen moment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from ladnn.data.contributions import read_contribution, read_uploads
from ladnn.data.operations import (
    ImportLockedError,
    find_version,
    import_batch,
    read_version_metadata,
)
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.workspace import Workspace

BASE_SIZE = 10
BATCH_SIZE = 40
# A stuck import fails the test after this many seconds instead of hanging the run.
POLL_TIMEOUT_S = 120.0

IMPORT_SCRIPT = """
import sys
from pathlib import Path

from ladnn.data.contributions import read_contribution
from ladnn.data.operations import import_batch
from ladnn.workspace import Workspace

root, workspace, batch = (Path(arg) for arg in sys.argv[1:4])
batch_id, items = read_contribution(batch, label=1)
import_batch(root, Workspace.resolve(workspace), batch_id, items, progress=False)
"""


@dataclass(frozen=True)
class Folders:
    base: Path
    batch: Path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, release_dir: Path) -> Folders:
    """Copy 50 real COVID slices into a base folder of 10 and a contributed batch of 40."""
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[: BASE_SIZE + BATCH_SIZE]
    parent = tmp_path_factory.mktemp("crash-sources")
    result = Folders(base=parent / "base", batch=parent / "ward-b")
    for folder, chosen in ((result.base, images[:BASE_SIZE]), (result.batch, images[BASE_SIZE:])):
        folder.mkdir()
        for path in chosen:
            shutil.copy(path, folder / path.name)
    return result


@dataclass
class Dataset:
    root: Path
    workspace: Workspace
    store: DatasetStore
    v1_ids: set[str]
    # Objects of v1 in the DVC cache, and so on the remote: its images, metadata and listing.
    v1_objects: int = 0


def _object_count(folder: Path) -> int:
    """Count the objects in a DVC cache or local remote."""
    return sum(len(files) for _, _, files in os.walk(folder / "files"))


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory, folders: Folders) -> Dataset:
    """Import the base folder once as dataset version v1; tests work on copies of it."""
    parent = tmp_path_factory.mktemp("crash-base")
    root = parent / "root"
    root.mkdir()
    workspace = Workspace.resolve(parent / "workspace").ensure()
    batch_id, items = read_contribution(folders.base, label=1)
    result = import_batch(root, workspace, batch_id, items, progress=False)
    assert result.version.name == "v1"

    store = DatasetStore(root)
    ids = set(store.read_metadata()["image_id"])
    return Dataset(root, workspace, store, ids, _object_count(workspace.dvc_cache))


@pytest.fixture
def dataset(tmp_path: Path, base_dataset: Dataset) -> Dataset:
    """Copy the v1 root and workspace; each import points DVC at the copied workspace again."""
    root = tmp_path / "root"
    shutil.copytree(base_dataset.root, root)
    shutil.copytree(base_dataset.workspace.root, tmp_path / "workspace")
    workspace = Workspace.resolve(tmp_path / "workspace")
    return Dataset(
        root, workspace, DatasetStore(root), base_dataset.v1_ids, base_dataset.v1_objects
    )


@pytest.fixture
def empty_dataset(tmp_path: Path) -> Dataset:
    """Return a root without any data and a fresh workspace."""
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    return Dataset(root, workspace, DatasetStore(root), set())


def _start_import(dataset: Dataset, batch: Path, log_path: Path) -> subprocess.Popen:
    """Start the batch import in its own process group, so one signal reaches its DVC children."""
    log = log_path.open("wb")
    command = [sys.executable, "-c", IMPORT_SCRIPT, str(dataset.root), str(dataset.workspace.root)]
    process = subprocess.Popen(
        [*command, str(batch)],
        cwd=dataset.root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def _new_images(dataset: Dataset) -> list[str]:
    """Return the committed-looking image files (not temporary files) that v1 does not list."""
    if not dataset.store.images_dir.is_dir():
        return []
    return [
        entry.name
        for entry in os.scandir(dataset.store.images_dir)
        if entry.name.endswith(".png")
        and not entry.name.startswith(".")
        and entry.name[: -len(".png")] not in dataset.v1_ids
    ]


def _gained_objects(folder: Path, dataset: Dataset) -> bool:
    """Check whether the cache or remote `folder` contains more objects than v1's."""
    return _object_count(folder) > dataset.v1_objects


def _kill_group(process: subprocess.Popen) -> None:
    # The group is gone once its last process has exited and been reaped.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_until(process: subprocess.Popen, log_path: Path, reached, poll_seconds: float) -> None:
    """Poll until `reached()` is true; fail if the import ends first or the poll times out."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        if reached():
            return
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(
                f"import exited with code {process.returncode} before the kill moment:\n{log}"
            )
        time.sleep(poll_seconds)
    _kill_group(process)
    pytest.fail(f"kill moment not reached within {POLL_TIMEOUT_S} s")


@dataclass(frozen=True)
class KillMoment:
    # Condition on the running import that triggers SIGKILL.
    reached: Callable[[Dataset, subprocess.Popen], bool]
    # The batch's image files are all written within a fraction of a second, so those moments
    # need a fine poll. Each DVC command runs longer, and listing child processes costs more CPU.
    poll_seconds: float


KILL_MOMENTS = {
    "first-image-written": KillMoment(lambda dataset, _: len(_new_images(dataset)) >= 1, 0.0005),
    "half-images-written": KillMoment(
        lambda dataset, _: len(_new_images(dataset)) >= BATCH_SIZE // 2, 0.0005
    ),
    # After the first version, DVC's work runs in the importing process: the batch's objects are
    # copied into the cache, `data.dvc` is rewritten, then the objects are pushed.
    "dvc-cache-written": KillMoment(
        lambda dataset, _: _gained_objects(dataset.workspace.dvc_cache, dataset), 0.0005
    ),
    "dvc-push-running": KillMoment(
        lambda dataset, _: _gained_objects(dataset.workspace.dvc_remote, dataset), 0.0005
    ),
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_killed_import_recovers(dataset, folders, tmp_path, moment):
    log_path = tmp_path / "import.log"
    kill_moment = KILL_MOMENTS[moment]
    process = _start_import(dataset, folders.batch, log_path)
    try:
        _wait_until(
            process,
            log_path,
            lambda: kill_moment.reached(dataset, process),
            kill_moment.poll_seconds,
        )
    finally:
        _kill_group(process)
    seen_after_kill = len(_new_images(dataset))

    # The recorded version v1 is intact in the DVC cache and no new version was recorded.
    v1 = find_version(dataset.workspace, "v1")
    assert [version.name for version in list_versions(dataset.workspace)] == ["v1"]
    assert set(read_version_metadata(dataset.workspace, v1)["image_id"]) == dataset.v1_ids

    # data/ contains either v1 or the whole batch, never part of it, and every row has its image.
    listed = set(dataset.store.read_metadata()["image_id"])
    assert len(listed) in {BASE_SIZE, BASE_SIZE + BATCH_SIZE}, f"{seen_after_kill} new files"
    assert dataset.v1_ids <= listed
    for image_id in listed:
        assert dataset.store.image_path(image_id).is_file(), image_id

    batch_id, items = read_contribution(folders.batch, label=1)
    result = import_batch(dataset.root, dataset.workspace, batch_id, items, progress=False)
    metadata = dataset.store.read_metadata()
    on_disk = {path.name for path in dataset.store.images_dir.iterdir()}

    assert result.created
    assert result.version.name == "v2"
    assert result.version.n_images == BASE_SIZE + BATCH_SIZE
    assert len(result.report.added) + len(result.report.already_present) == BATCH_SIZE
    assert len(metadata) == BASE_SIZE + BATCH_SIZE
    assert on_disk == {f"{image_id}.png" for image_id in metadata["image_id"]}
    assert list(dataset.store.data_dir.glob(".*.tmp")) == []
    v2_metadata = read_version_metadata(dataset.workspace, result.version)
    assert len(v2_metadata) == BASE_SIZE + BATCH_SIZE


# --- two imports at once ---


def test_import_lock_held(empty_dataset, folders):
    batch_id, items = read_contribution(folders.batch, label=1)
    lock_path = empty_dataset.workspace.root / "locks" / "dataset.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)

    with FileLock(lock_path), pytest.raises(ImportLockedError) as caught:
        import_batch(
            empty_dataset.root,
            empty_dataset.workspace,
            batch_id,
            items,
            progress=False,
            wait_seconds=0.2,
        )
    message = str(caught.value)

    assert "another import" in message
    assert "is running" in message
    assert str(lock_path) in message
    assert not empty_dataset.store.data_dir.exists()
    assert list_versions(empty_dataset.workspace) == []


def test_import_waits_for_lock(empty_dataset, folders):
    """With `wait_seconds`, an import waits for a lock that is released in time."""
    upload = sorted(folders.batch.iterdir())[0]
    batch_id, items = read_uploads([upload], label=1, batch_id="upload-wait")
    lock_path = empty_dataset.workspace.root / "locks" / "dataset.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, thread_local=False)
    lock.acquire()
    releaser = threading.Timer(0.5, lock.release)
    releaser.start()

    try:
        result = import_batch(
            empty_dataset.root,
            empty_dataset.workspace,
            batch_id,
            items,
            progress=False,
            wait_seconds=60,
        )
    finally:
        releaser.join()

    assert result.version.name == "v1"
    assert result.report.added == [upload.name]


def test_concurrent_import_rejected(dataset, folders, tmp_path):
    """An import started while another process imports raises, and the first one completes."""
    log_path = tmp_path / "import.log"
    batch_id, items = read_contribution(folders.batch, label=1)
    process = _start_import(dataset, folders.batch, log_path)
    try:
        _wait_until(process, log_path, lambda: len(_new_images(dataset)) >= 1, 0.0005)
        with pytest.raises(ImportLockedError) as caught:
            import_batch(dataset.root, dataset.workspace, batch_id, items, progress=False)
        return_code = process.wait(timeout=POLL_TIMEOUT_S)
    finally:
        _kill_group(process)

    assert "another import" in str(caught.value)
    assert return_code == 0, log_path.read_text(errors="replace")[-2000:]
    assert [version.name for version in list_versions(dataset.workspace)] == ["v1", "v2"]
