"""The data-validation gate: derive the columns GX cannot compute, run the row-level, warning and
batch-level suites over a batch table, and collect the verdict with a reason for every rejected row.

The importer calls `validate_batch` after decoding and before committing; `ladnn validate` calls it
without committing anything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ladnn.data.lesions import LESIONS
from ladnn.validation.near_duplicates import batch_near_duplicate_column, leakage_columns
from ladnn.validation.results import (
    Reason,
    RejectedRow,
    ValidationResult,
    new_validation_id,
    write_result,
)
from ladnn.validation.runner import CheckResult, SuiteRunner
from ladnn.validation.suite import (
    BATCH_LEVEL,
    DERIVED_COLUMNS,
    ROW_LEVEL,
    WARNING,
    ValidationSettings,
    batch_checks,
    row_checks,
    warning_checks,
)

__all__ = ["VALIDATED_OUTCOMES", "BatchValidationError", "derive_columns", "validate_batch"]

logger = logging.getLogger(__name__)

# Rows the gate validates: files new to the dataset, files that did not decode, and copies of a
# dataset image under another patient or split. Files already present under the same name, and
# copies of an image of the same patient and split, add nothing and are not validated.
VALIDATED_OUTCOMES = ("candidate", "undecodable", "conflicting_duplicate")
# Rows that would add an image. Only they count towards the fraction of rejected rows, because a
# conflicting copy adds nothing: a batch of one such copy is quarantined, not stopped.
_ADDING_OUTCOMES = ("candidate", "undecodable")


class BatchValidationError(ValueError):
    """A batch failed a blocking batch-level check, so none of it may be committed."""

    def __init__(self, result: ValidationResult):
        self.result = result
        where = f"; details in {result.directory}" if result.directory is not None else ""
        failures = "; ".join(failure["summary"] for failure in result.failures)
        super().__init__(
            f"batch {result.batch_id} failed validation {result.validation_id}, so nothing was "
            f"imported: {failures}{where}"
        )


def _blank_to_missing(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def derive_columns(
    table: pd.DataFrame, reference: pd.DataFrame, settings: ValidationSettings
) -> pd.DataFrame:
    """Return the rows to validate with the derived columns the suites read.

    `positive_lesions` lists the lesions marked 1. `exact_match_of` names the dataset images of
    another patient or split with the same pixels, and `near_duplicate_of` those within
    `settings.near_duplicate_distance` pHash bits. `batch_near_duplicate_of` names such images
    within the batch. Empty patient ids and sources count as missing.
    """
    frame = table[table["outcome"].isin(VALIDATED_OUTCOMES)].copy()
    for column in ("patient_id", "source"):
        frame[column] = _blank_to_missing(frame[column])
    marked = frame.loc[:, list(LESIONS)].eq(1).fillna(False).astype(bool)
    positive = pd.Series(
        [", ".join(code for code in LESIONS if flags[code]) for flags in marked.to_dict("records")],
        index=frame.index,
        dtype="string",
    )
    frame["positive_lesions"] = positive.mask(positive == "")
    leaks = leakage_columns(frame, reference, settings.near_duplicate_distance)
    frame["exact_match_of"] = leaks["exact_match_of"]
    frame["near_duplicate_of"] = leaks["near_duplicate_of"]
    frame["batch_near_duplicate_of"] = batch_near_duplicate_column(
        frame, settings.near_duplicate_distance
    )
    return frame.reset_index(drop=True)


def _failure_record(result: CheckResult) -> dict[str, object]:
    return {
        "check": result.check.name,
        "level": result.check.level,
        "expectation_type": result.check.expectation_type,
        "summary": result.summary(),
        "unexpected_count": result.unexpected_count,
    }


def _collect_reasons(
    frame: pd.DataFrame, row_results: list[CheckResult]
) -> dict[int, list[Reason]]:
    rows = frame.set_index("row", drop=False)
    reasons: dict[int, list[Reason]] = {}
    for result in row_results:
        if result.success or result.check.reason is None:
            continue
        for row in result.failed_rows:
            reasons.setdefault(row, []).append(
                Reason(
                    expectation=result.check.name,
                    detail=result.check.reason(rows.loc[row]),
                    expectation_type=result.check.expectation_type,
                )
            )
    return reasons


def validate_batch(
    table: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    batch_id: str,
    settings: ValidationSettings | None = None,
    output_root: Path | None = None,
    mode: str = "import",
) -> ValidationResult:
    """Run the gate over `table` (from `build_metrics_table`) against `reference` (the dataset's
    image metrics) and return the result. A failing batch is reported in the result, not raised.

    With `output_root`, the result, the validated table and the Data Docs are written to
    `output_root/<validation id>/`.
    """
    settings = settings or ValidationSettings()
    now = datetime.now(UTC)
    content_key = "\n".join(
        f"{name}:{image_id}"
        for name, image_id in zip(table["file_name"], table["image_id"], strict=True)
    )
    validation_id = new_validation_id(batch_id, content_key, now)
    directory = output_root / validation_id if output_root is not None else None
    docs_dir = directory / "docs" if directory is not None and settings.build_docs else None

    frame = derive_columns(table, reference, settings)
    runner = SuiteRunner(docs_dir, run_name=validation_id)
    row_results = runner.run(ROW_LEVEL, row_checks(settings), frame)
    reasons = _collect_reasons(frame, row_results)
    rejected = frame["row"].isin(list(reasons)).astype("boolean")
    frame["rejected"] = rejected.where(frame["outcome"].isin(_ADDING_OUTCOMES), pd.NA)
    warning_results = runner.run(WARNING, warning_checks(settings, reference, frame), frame)
    batch_results = runner.run(BATCH_LEVEL, batch_checks(settings), frame)
    docs_index = runner.build_docs()

    # A row-level check that raised found no rows, so its verdict is unknown and it blocks too.
    blocking = [r for r in batch_results if not r.success]
    blocking += [r for r in row_results if r.exception is not None]
    file_names = dict(zip(frame["row"].astype(int), frame["file_name"].astype(str), strict=True))
    warnings = []
    for result in warning_results:
        if not result.success:
            record = _failure_record(result)
            record["files"] = [file_names[row] for row in result.failed_rows]
            warnings.append(record)
    outcomes = table["outcome"].value_counts()
    counts = {
        "files": len(table),
        "validated": len(frame),
        "rejected": len(reasons),
        "accepted": len(frame) - len(reasons) if not blocking else 0,
        "undecodable": int(outcomes.get("undecodable", 0)),
        "already_present": int(outcomes.get("already_present", 0)),
        "duplicates": int(outcomes.get("duplicate", 0)),
        "conflicting_duplicates": int(outcomes.get("conflicting_duplicate", 0)),
        "failed_row_checks": sum(1 for r in row_results if not r.success),
    }
    result = ValidationResult(
        validation_id=validation_id,
        batch_id=batch_id,
        created_at=now.isoformat(timespec="seconds"),
        mode=mode,
        success=not blocking,
        counts=counts,
        failures=[_failure_record(r) for r in blocking],
        warnings=warnings,
        rejected=[
            RejectedRow(row=row, file_name=file_names[row], reasons=row_reasons)
            for row, row_reasons in sorted(reasons.items())
        ],
        settings=asdict(settings),
        reference_images=len(reference),
        docs_index=str(docs_index.relative_to(directory)) if docs_index and directory else None,
        directory=directory,
    )
    if directory is not None:
        derived = frame.loc[:, ["row", *DERIVED_COLUMNS]]
        write_result(result, table.merge(derived, on="row", how="left"))
    logger.info(
        "validation %s of batch %s: %s, %d rejected, %d warning(s)",
        validation_id,
        batch_id,
        "passed" if result.success else "failed",
        len(reasons),
        len(warnings),
    )
    return result
