"""The quarantine: files the gate rejected, kept with their reasons under
`<workspace>/quarantine/<batch id>/`, listed, and released back into the dataset once fixed.

A rejected file is stored as `<first 12 hex digits of its SHA-256>-<base name>` beside
`<stored name>.reason.json`. The JSON contains the reasons, the validation id and the publisher's
fields of the file (`item`), so the file can be validated and imported again on its own. A
maintainer fixes an entry by replacing the stored file or by editing `item`, then releases it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ladnn.data.store import atomic_write_bytes
from ladnn.validation.results import Reason
from ladnn.validation.suite import ValidationSettings

if TYPE_CHECKING:
    from ladnn.config import ServersCfg
    from ladnn.data.operations import BatchImport
    from ladnn.workspace import Workspace

__all__ = [
    "REASON_SUFFIX",
    "RELEASED_FOLDER",
    "QuarantineEntry",
    "ReleaseOutcome",
    "item_fields",
    "quarantine_file",
    "list_quarantine",
    "find_entry",
    "release_entry",
]

logger = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"
# Released entries move here, inside their batch folder, and are no longer listed.
RELEASED_FOLDER = "released"


@dataclass
class QuarantineEntry:
    """One quarantined file: `entry_id` is `<batch folder>/<stored file name>`."""

    entry_id: str
    path: Path
    record: dict[str, Any]

    @property
    def reason_path(self) -> Path:
        return self.path.with_name(self.path.name + REASON_SUFFIX)

    @property
    def file_name(self) -> str:
        return str(self.record.get("file_name", self.path.name))

    @property
    def batch_id(self) -> str:
        return str(self.record.get("batch_id", self.path.parent.name))

    @property
    def reasons(self) -> list[dict[str, str]]:
        """The reasons as `{expectation, detail}` dicts; older records hold one `reason` text."""
        if self.record.get("reasons"):
            return list(self.record["reasons"])
        return [{"expectation": "decodes", "detail": str(self.record.get("reason", ""))}]


def item_fields(item: Any) -> dict[str, Any]:
    """Return the fields of an `ImportItem` that JSON can hold (all but `read_bytes`)."""
    return {
        spec.name: getattr(item, spec.name)
        for spec in dataclasses.fields(item)
        if spec.name != "read_bytes"
    }


def _reason_dicts(reasons: Sequence[Reason]) -> list[dict[str, str]]:
    return [dataclasses.asdict(reason) for reason in reasons]


def quarantine_file(
    quarantine_dir: Path,
    batch_id: str,
    fields: dict[str, Any],
    data: bytes,
    reasons: Sequence[Reason],
    validation_id: str | None,
) -> QuarantineEntry:
    """Copy a rejected file into `quarantine_dir/<batch_id>/` with its reason record."""
    folder = quarantine_dir / batch_id
    # The content hash keeps two rejected files of the same name apart.
    stored_name = f"{hashlib.sha256(data).hexdigest()[:12]}-{Path(fields['file_name']).name}"
    path = folder / stored_name
    record = {
        "id": f"{batch_id}/{stored_name}",
        "file_name": fields["file_name"],
        "batch_id": batch_id,
        "reason": "; ".join(f"{reason.expectation}: {reason.detail}" for reason in reasons),
        "reasons": _reason_dicts(reasons),
        "validation_id": validation_id,
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "item": fields,
    }
    atomic_write_bytes(path, data)
    entry = QuarantineEntry(record["id"], path, record)
    atomic_write_bytes(entry.reason_path, json.dumps(record, indent=2, default=str).encode())
    return entry


def _read_entry(reason_path: Path, quarantine_dir: Path) -> QuarantineEntry:
    path = reason_path.with_name(reason_path.name[: -len(REASON_SUFFIX)])
    record = json.loads(reason_path.read_text("utf-8"))
    entry_id = path.relative_to(quarantine_dir).as_posix()
    return QuarantineEntry(entry_id, path, record)


def list_quarantine(quarantine_dir: Path) -> list[QuarantineEntry]:
    """Return the quarantined files that are not released, sorted by id."""
    if not quarantine_dir.is_dir():
        return []
    entries = [
        _read_entry(reason_path, quarantine_dir)
        for reason_path in quarantine_dir.glob(f"*/*{REASON_SUFFIX}")
    ]
    return sorted(entries, key=lambda entry: entry.entry_id)


def find_entry(quarantine_dir: Path, entry_id: str) -> QuarantineEntry:
    """Look up an entry by the id `ladnn quarantine list` shows."""
    parts = Path(entry_id).parts
    if len(parts) != 2 or ".." in parts:
        raise ValueError(
            f"invalid quarantine id {entry_id!r}: expected <batch id>/<stored file name>"
        )
    reason_path = quarantine_dir / parts[0] / (parts[1] + REASON_SUFFIX)
    if not reason_path.is_file() or not (quarantine_dir / entry_id).is_file():
        raise FileNotFoundError(
            f"no quarantined file {entry_id!r} in {quarantine_dir}: run `ladnn quarantine list`"
        )
    return _read_entry(reason_path, quarantine_dir)


@dataclass
class ReleaseOutcome:
    entry: QuarantineEntry
    # True when the file passed and is now in the dataset (or its pixels already were).
    released: bool
    result: BatchImport


def _write_record(entry: QuarantineEntry) -> None:
    text = json.dumps(entry.record, indent=2, default=str)
    atomic_write_bytes(entry.reason_path, text.encode("utf-8"))


def release_entry(
    root: Path,
    workspace: Workspace,
    entry_id: str,
    *,
    progress: bool = False,
    servers: ServersCfg | None = None,
) -> ReleaseOutcome:
    """Validate a quarantined file again, with its possibly edited `item` fields, and import it
    into the dataset at `root` as part of its original batch if it now passes.

    A released entry moves to `<batch>/released/` with the release recorded in its JSON. An entry
    that still fails stays where it is, its reasons replaced by the new ones.
    """
    from ladnn.data.importer import ImportItem
    from ladnn.data.operations import import_batch

    entry = find_entry(workspace.quarantine_dir, entry_id)
    data = entry.path.read_bytes()
    fields = dict(entry.record["item"])
    item = ImportItem(**fields, read_bytes=lambda: data)
    # One file makes a batch of one, so only row-level checks may reject it.
    settings = ValidationSettings(max_rejected_fraction=1.0)
    result = import_batch(
        root,
        workspace,
        entry.batch_id,
        [item],
        progress=progress,
        quarantine=False,
        settings=settings,
        servers=servers,
    )
    report = result.report
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if report.rejected:
        rejected = report.rejected[0][1]
        validation = report.validation
        reasons = validation.rejected[0].reasons if validation is not None else []
        entry.record.update(
            reasons=_reason_dicts(reasons),
            reason=rejected,
            validation_id=report.validation_id,
            checked_at=now,
        )
        _write_record(entry)
        logger.warning("quarantined file %s still fails: %s", entry_id, rejected)
        return ReleaseOutcome(entry, released=False, result=result)

    entry.record.update(
        released_at=now,
        release_validation_id=report.validation_id,
        dataset_version=result.version.name,
        added=bool(report.added),
    )
    target = entry.path.parent / RELEASED_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    _write_record(entry)
    entry.reason_path.replace(target / entry.reason_path.name)
    entry.path.replace(target / entry.path.name)
    logger.info(
        "released quarantined file %s into dataset version %s", entry_id, result.version.name
    )
    return ReleaseOutcome(entry, released=True, result=result)
