"""Validation results: ids, per-row reasons, and the JSON record stored under
`<workspace>/validation/<id>/result.json` beside the batch's metrics table and Data Docs."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ladnn.data.store import atomic_write_bytes

__all__ = [
    "RESULT_FILE",
    "METRICS_FILE",
    "Reason",
    "RejectedRow",
    "ValidationResult",
    "new_validation_id",
    "write_result",
    "read_result",
    "list_results",
]

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"


@dataclass(frozen=True)
class Reason:
    """Why a row was rejected: the check that failed, its GX expectation type and the detail."""

    expectation: str
    detail: str
    expectation_type: str = ""


@dataclass
class RejectedRow:
    row: int
    file_name: str
    reasons: list[Reason]

    def reason_text(self) -> str:
        """Join the reasons into one line, e.g. for `ImportReport.rejected`."""
        return "; ".join(f"{reason.expectation}: {reason.detail}" for reason in self.reasons)


@dataclass
class ValidationResult:
    """Everything one run of the gate found about one batch."""

    validation_id: str
    batch_id: str
    created_at: str
    # `import` when the batch was being imported, `dry-run` for `ladnn validate`.
    mode: str
    success: bool
    counts: dict[str, int]
    # Blocking checks that failed: {check, level, expectation_type, summary, unexpected_count}.
    failures: list[dict[str, Any]]
    # Warning checks that failed: the same fields plus `files`, the file names of failing rows.
    warnings: list[dict[str, Any]]
    rejected: list[RejectedRow]
    settings: dict[str, Any]
    reference_images: int
    # Data Docs index page, relative to the result's folder; None when no docs were built.
    docs_index: str | None = None
    # Folder holding result.json; not stored in the JSON itself.
    directory: Path | None = field(default=None, compare=False)

    @property
    def rejected_rows(self) -> dict[int, RejectedRow]:
        return {rejected.row: rejected for rejected in self.rejected}

    @property
    def docs_path(self) -> Path | None:
        if self.directory is None or self.docs_index is None:
            return None
        return self.directory / self.docs_index

    def warning_lines(self) -> list[str]:
        lines = []
        for warning in self.warnings:
            files = warning.get("files") or []
            file_list = ""
            if files:
                file_list = f" ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
            lines.append(f"{warning['summary']}{file_list}")
        return lines

    def summary(self) -> str:
        """Describe the outcome in a few lines: verdict, counts, blocking failures and warnings."""
        verdict = "passed" if self.success else "FAILED"
        counts = self.counts
        lines = [
            f"validation {self.validation_id} {verdict}: {counts.get('validated', 0)} row(s) "
            f"validated, {counts.get('rejected', 0)} rejected, {counts.get('accepted', 0)} accepted, "
            f"{counts.get('already_present', 0)} already present, "
            f"{counts.get('duplicates', 0)} duplicate(s), {len(self.warnings)} warning(s)"
        ]
        lines += [f"  blocking: {failure['summary']}" for failure in self.failures]
        for rejected in self.rejected:
            lines.append(f"  rejected: {rejected.file_name}: {rejected.reason_text()}")
        lines += [f"  warning: {line}" for line in self.warning_lines()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("directory")
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any], directory: Path | None = None) -> ValidationResult:
        rejected = [
            RejectedRow(
                row=item["row"],
                file_name=item["file_name"],
                reasons=[Reason(**reason) for reason in item["reasons"]],
            )
            for item in record["rejected"]
        ]
        return cls(**{**record, "rejected": rejected}, directory=directory)


def new_validation_id(batch_id: str, content_key: str, now: datetime) -> str:
    """Return `val-<batch>-<UTC timestamp>-<8 hex digits>`.

    The digits hash `content_key` (what was validated) with the full timestamp, so two runs in one
    second differ. Characters other than letters, digits, `.`, `_` and `-` in the batch id become
    `-`, because the id names a folder.
    """
    safe_batch = re.sub(r"[^A-Za-z0-9._-]+", "-", batch_id).strip("-") or "batch"
    digest = hashlib.sha256(f"{content_key}\n{now.isoformat()}".encode()).hexdigest()[:8]
    return f"val-{safe_batch}-{now.strftime('%Y%m%dT%H%M%S')}-{digest}"


def write_result(result: ValidationResult, metrics: pd.DataFrame) -> Path:
    """Write `result.json` and the validated table `metrics.csv` into `result.directory`."""
    if result.directory is None:
        raise ValueError(f"validation {result.validation_id} has no folder to write to")
    text = json.dumps(result.to_dict(), indent=2, default=str)
    atomic_write_bytes(result.directory / RESULT_FILE, text.encode("utf-8"))
    csv_text = metrics.to_csv(index=False, lineterminator="\n")
    atomic_write_bytes(result.directory / METRICS_FILE, csv_text.encode("utf-8"))
    return result.directory / RESULT_FILE


def read_result(validation_root: Path, validation_id: str) -> ValidationResult:
    """Read a stored result; raise FileNotFoundError naming the folder when there is none."""
    directory = validation_root / validation_id
    path = directory / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no validation result {validation_id} in {validation_root}")
    return ValidationResult.from_dict(json.loads(path.read_text("utf-8")), directory=directory)


def list_results(validation_root: Path) -> list[ValidationResult]:
    """Return the stored results under `validation_root`, oldest first."""
    if not validation_root.is_dir():
        return []
    results = [
        read_result(validation_root, path.parent.name)
        for path in validation_root.glob(f"*/{RESULT_FILE}")
    ]
    return sorted(results, key=lambda result: (result.created_at, result.validation_id))
