"""Dataset operations behind the CLI and flows: a locked import-and-version step, reading the
metadata of any recorded version back from the DVC cache or remote, and diffing two versions."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from ladnn.config import ServersCfg
from ladnn.data.importer import ImportItem, ImportReport, import_items
from ladnn.data.schema import coerce_metadata
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DatasetVersion, commit_version, list_versions
from ladnn.validation.suite import ValidationSettings
from ladnn.workspace import Workspace

__all__ = [
    "ImportLockedError",
    "BatchImport",
    "import_batch",
    "read_version_metadata",
    "find_version",
    "VersionDiff",
    "diff_versions",
]

logger = logging.getLogger(__name__)


class ImportLockedError(RuntimeError):
    """Another import holds the dataset lock."""


@dataclass
class BatchImport:
    report: ImportReport
    version: DatasetVersion
    created: bool


def _lock_path(workspace: Workspace) -> Path:
    return workspace.root / "locks" / "dataset.lock"


def import_batch(
    root: Path,
    workspace: Workspace,
    batch_id: str,
    items: Iterable[ImportItem],
    *,
    progress: bool = True,
    wait_seconds: float = 0.0,
    quarantine: bool = True,
    settings: ValidationSettings | None = None,
    servers: ServersCfg | None = None,
) -> BatchImport:
    """Import a batch and record the result as a dataset version, holding the dataset lock.

    The data-validation gate runs before anything is committed, with `settings` (default
    thresholds when None). Rejected rows go to the workspace's quarantine unless `quarantine` is
    False. The result and its Data Docs go to `<workspace>/validation/<validation id>/`, and a new
    version records the validation id. A batch failing a batch-level check raises
    `BatchValidationError` (a ValueError) and changes nothing.

    A second import while one runs waits `wait_seconds`, then raises `ImportLockedError`. An
    import interrupted at any point leaves the last recorded version intact in the DVC cache and
    remote; its leftover image files are removed by the next import, which then completes.
    """
    lock_path = _lock_path(workspace)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        raise ImportLockedError(
            f"another import into {root / 'data'} is running (lock {lock_path}); "
            "wait for it to finish and try again"
        ) from None
    try:
        store = DatasetStore(root)
        report = import_items(
            items,
            store,
            batch_id,
            quarantine_dir=workspace.quarantine_dir if quarantine else None,
            validation_dir=workspace.validation_dir,
            settings=settings,
            progress=progress,
        )
        if not store.exists():
            raise ValueError(f"batch {batch_id} added no image, so there is no dataset to version")
        version, created = commit_version(
            root, workspace, batch_id, validation_id=report.validation_id, servers=servers
        )
        return BatchImport(report=report, version=version, created=created)
    finally:
        lock.release()


def find_version(workspace: Workspace, name: str) -> DatasetVersion:
    """Look up `vN` (or `N`, or `latest`) among the recorded versions."""
    versions = list_versions(workspace)
    if not versions:
        raise ValueError(f"no dataset version is recorded in {workspace.root}")
    if name == "latest":
        return versions[-1]
    number = name[1:] if name.startswith("v") else name
    for version in versions:
        if str(version.number) == number:
            return version
    raise ValueError(
        f"unknown dataset version {name!r}: expected one of {[v.name for v in versions]}"
    )


def _object_path(folder: Path, md5: str) -> Path:
    return folder / "files" / "md5" / md5[:2] / md5[2:]


def _read_object(workspace: Workspace, md5: str) -> bytes:
    # NOTE: a shared remote (`servers.dvc_remote`) is not read here, so a machine whose DVC cache
    # lacks a version's objects needs `dvc fetch` in the data root first.
    for folder in (workspace.dvc_cache, workspace.dvc_remote):
        path = _object_path(folder, md5)
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(
        f"DVC object {md5} is in neither {workspace.dvc_cache} nor {workspace.dvc_remote}"
    )


def read_version_metadata(workspace: Workspace, version: DatasetVersion) -> pd.DataFrame:
    """Read `metadata.csv` of a recorded version from the DVC cache or remote."""
    manifest = json.loads(_read_object(workspace, version.md5))
    entry = next((item for item in manifest if item["relpath"] == "metadata.csv"), None)
    if entry is None:
        raise ValueError(f"dataset version {version.name} has no metadata.csv")
    text = _read_object(workspace, entry["md5"]).decode("utf-8")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    return coerce_metadata(frame)


@dataclass
class VersionDiff:
    old: DatasetVersion
    new: DatasetVersion
    added: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame

    def summary(self) -> str:
        lines = [
            f"{self.old.name} -> {self.new.name}: {len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed"
        ]
        if not self.added.empty:
            by_batch = self.added.groupby(["batch_id", "label", "split"]).size()
            for (batch, label, split), count in by_batch.items():
                kind = "COVID" if int(label) == 1 else "negative"
                lines.append(f"  + {count:4d} {kind:8s} {split:5s} from {batch}")
        return "\n".join(lines)


def diff_versions(workspace: Workspace, old_name: str, new_name: str) -> VersionDiff:
    old, new = find_version(workspace, old_name), find_version(workspace, new_name)
    before = read_version_metadata(workspace, old).set_index("image_id")
    after = read_version_metadata(workspace, new).set_index("image_id")
    added = after.loc[after.index.difference(before.index)].reset_index()
    removed = before.loc[before.index.difference(after.index)].reset_index()
    common = after.index.intersection(before.index)
    left = before.loc[common].astype("string").fillna("")
    right = after.loc[common].astype("string").fillna("")
    changed_mask = (left != right).any(axis=1)
    changed = after.loc[common[changed_mask.to_numpy()]].reset_index()
    return VersionDiff(old=old, new=new, added=added, removed=removed, changed=changed)
