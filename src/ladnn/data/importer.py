"""Turn a batch of source images with their labels into canonical rows of the dataset.

`import_items` decodes every file while measuring it (`decode_batch`), runs the data-validation
gate over the batch's metrics table, quarantines the rows the gate rejects and commits the rest.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ladnn.data.images import ImageDecodeError, NormalisedImage, encode_png, normalise_image
from ladnn.data.lesions import LESIONS
from ladnn.data.schema import SPLITS, coerce_metadata
from ladnn.data.splits import split_for_patient
from ladnn.data.store import DatasetStore
from ladnn.validation.gate import BatchValidationError, validate_batch
from ladnn.validation.image_metrics import (
    REFERENCE_CACHE_NAME,
    build_metrics_table,
    cache_reference_metrics,
    load_reference_metrics,
    measure_decoded,
    measure_pixels,
    measure_undecodable,
)
from ladnn.validation.quarantine import item_fields, quarantine_file
from ladnn.validation.results import ValidationResult
from ladnn.validation.suite import ValidationSettings

__all__ = [
    "NEGATIVE_SUBTYPES",
    "ImportItem",
    "ImportReport",
    "DecodedBatch",
    "decode_batch",
    "metadata_problems",
    "import_items",
    "validate_items",
]

logger = logging.getLogger(__name__)


@dataclass
class ImportItem:
    """One source image and all metadata its publisher gives for it."""

    file_name: str
    read_bytes: Callable[[], bytes]
    # 0 or 1. A reader keeps a value it cannot read as it is, and the gate rejects that row.
    label: int | str
    patient_id: str
    source: str
    # Lesion code to 1 or 0; a lesion missing from the mapping is unknown. An unknown name or a
    # value other than 0 or 1 is kept as given and rejects the row.
    lesions: dict[str, int | str] = field(default_factory=dict)
    negative_subtype: str | None = None
    # ISO date; a text that does not parse is kept and rejects the row.
    collected_on: str | None = None
    caption: str | None = None
    # A split fixed by the publisher; None assigns one from the patient.
    split: str | None = None


@dataclass
class ImportReport:
    batch_id: str
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    # (file name, file name of the image already in the dataset or batch with the same pixels)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    # (file name, reason)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # The data-validation gate's run over this batch and its warnings, one line each.
    validation_id: str | None = None
    validation_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    validation: ValidationResult | None = field(default=None, repr=False, compare=False)

    @property
    def changed(self) -> bool:
        return bool(self.added)

    def summary(self) -> str:
        """Count each file once: a duplicate that the gate rejected (one of another patient or
        split) counts as rejected."""
        rejected = {name for name, _ in self.rejected}
        duplicates = [name for name, _ in self.duplicates if name not in rejected]
        return (
            f"batch {self.batch_id}: {len(self.added)} added, {len(self.already_present)} already "
            f"present, {len(duplicates)} duplicate(s), {len(self.rejected)} rejected"
        )


@dataclass
class DecodedBatch:
    """A decoded batch before validation: the metrics table (one row per input file, `row` being
    the position in `items`) and, for each candidate row, its metadata row and canonical PNG."""

    batch_id: str
    items: list[ImportItem]
    table: pd.DataFrame
    rows: dict[int, dict]
    pngs: dict[int, bytes]
    report: ImportReport
    # `measure_pixels` of each candidate's canonical pixels, in the form the reference metrics use.
    pixels: dict[int, dict[str, object]] = field(default_factory=dict)


NEGATIVE_SUBTYPES = ("normal", "lung cancer", "nodule", "other pneumonia")


def metadata_problems(item: ImportItem) -> list[str]:
    """List the problems in the metadata of `item`: a label other than 0 or 1, an unknown lesion
    name, a lesion value other than 0 or 1, or an unknown negative subtype."""
    problems = []
    if not _is_label(item.label):
        problems.append(f"invalid label {item.label!r}: expected 1/0, covid or negative")
    for name, value in item.lesions.items():
        if name not in LESIONS:
            problems.append(
                f"unknown lesion name {name!r}: expected one of {list(LESIONS)} or a known "
                "spelling such as 'Aibr', 'InSep' or 'consolidation(Csld)'"
            )
        elif not _is_label(value):
            problems.append(
                f"invalid value {value!r} of lesion {name}: expected 1, 0 or empty (unknown)"
            )
    subtype = item.negative_subtype
    if subtype is not None and subtype not in NEGATIVE_SUBTYPES:
        problems.append(
            f"invalid negative_subtype {subtype!r}: expected one of {list(NEGATIVE_SUBTYPES)}"
        )
    return problems


def _is_label(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)


def _metadata_row(item: ImportItem, batch_id: str, image_id: str | None, split: str | None) -> dict:
    row = {
        "image_id": image_id,
        "file_name": item.file_name,
        "label": int(item.label) if _is_label(item.label) else pd.NA,
        "patient_id": item.patient_id,
        "source": item.source,
        "negative_subtype": item.negative_subtype,
        "batch_id": batch_id,
        "collected_on": item.collected_on,
        "caption": item.caption,
        "split": split,
    }
    for lesion in LESIONS:
        value = item.lesions.get(lesion, pd.NA)
        row[lesion] = value if _is_label(value) else pd.NA
    return row


def _read_error(item: ImportItem, err: OSError) -> str:
    detail = err.strerror if err.strerror else str(err)
    return f"{item.file_name}: cannot read file ({detail})"


def decode_batch(
    items: Iterable[ImportItem],
    store: DatasetStore,
    batch_id: str,
    *,
    encode: bool = True,
    progress: bool = True,
) -> DecodedBatch:
    """Decode and measure every file, assign splits and sort out what the dataset already has.

    With `encode` False, no canonical PNG is encoded (`pngs` stays empty), which is enough for
    validating without importing.

    Outcomes in the table:

    - `undecodable`;
    - `already_present`: same pixels and file name as a dataset image;
    - `duplicate`: same pixels as a dataset image of the same patient and split, or as an earlier
      file of the batch;
    - `conflicting_duplicate`: same pixels as a dataset image of another patient or split, which
      the gate rejects;
    - `candidate`: new to the dataset.

    `metadata_error` holds what `metadata_problems` finds in a row's metadata (the gate rejects
    such a row); the label and lesion columns then hold only the values that are valid.
    """
    existing = store.read_metadata()
    known = existing.set_index("image_id")
    known_splits = dict(zip(existing["patient_id"], existing["split"], strict=True))
    report = ImportReport(batch_id=batch_id)
    records: list[dict] = []
    rows: dict[int, dict] = {}
    pngs: dict[int, bytes] = {}
    pixels: dict[int, dict[str, object]] = {}
    batch_names: dict[str, str] = {}

    items = list(items)
    # Encoding is the slowest step and zlib releases the GIL, so canonical PNGs encode in worker
    # threads while this thread decodes the next files. At most `backlog` decoded images wait.
    workers = min(4, os.cpu_count() or 1)
    backlog = 4 * workers
    pending: deque[tuple[int, Future[bytes]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="encode-png") as encoder:
        for position, item in enumerate(
            tqdm(items, desc=f"import {batch_id}", unit="img", disable=not progress)
        ):
            record = _decode_item(
                position, item, batch_id, known, known_splits, batch_names, report, records
            )
            if record is None:
                continue
            meta, normalised, measured = record
            rows[position] = meta
            pixels[position] = measured
            if encode:
                pending.append((position, encoder.submit(encode_png, normalised.image)))
                while len(pending) > backlog:
                    done, future = pending.popleft()
                    pngs[done] = future.result()
        for done, future in pending:
            pngs[done] = future.result()

    table = build_metrics_table(records)
    return DecodedBatch(batch_id, items, table, rows, pngs, report, pixels)


def _decode_item(
    position: int,
    item: ImportItem,
    batch_id: str,
    known: pd.DataFrame,
    known_splits: dict[str, str],
    batch_names: dict[str, str],
    report: ImportReport,
    records: list[dict],
) -> tuple[dict, NormalisedImage, dict[str, object]] | None:
    """Decode and measure one file, append its record, and return its metadata row, image and
    pixel metrics when it is a candidate.

    `known_splits`, `batch_names` and `report` are updated in place."""
    problems = metadata_problems(item)
    record = {"row": position, "metadata_error": "; ".join(problems) or None}
    data = b""
    try:
        data = item.read_bytes()
        normalised = normalise_image(data, item.file_name)
    except (ImageDecodeError, OSError) as err:
        message = str(err) if isinstance(err, ImageDecodeError) else _read_error(item, err)
        logger.warning("undecodable: %s", message)
        meta = _metadata_row(item, batch_id, None, None)
        measured = measure_undecodable(message, len(data))
        records.append({**meta, **record, "outcome": "undecodable", **measured})
        return None

    image_id = normalised.image_id
    split = known_splits.get(item.patient_id) or item.split or split_for_patient(item.patient_id)
    outcome = "candidate"
    if image_id in known.index:
        match = known.loc[image_id]
        if match["file_name"] == item.file_name:
            outcome = "already_present"
            report.already_present.append(item.file_name)
        else:
            same_owner = (match["patient_id"], match["split"]) == (item.patient_id, split)
            outcome = "duplicate" if same_owner else "conflicting_duplicate"
            report.duplicates.append((item.file_name, match["file_name"]))
    elif image_id in batch_names:
        outcome = "duplicate"
        report.duplicates.append((item.file_name, batch_names[image_id]))

    if outcome == "candidate":
        if item.split and split != item.split:
            raise ValueError(
                f"{item.file_name}: the publisher's split {item.split!r} conflicts with split "
                f"{split!r} that patient {item.patient_id!r} already has in the dataset"
            )
        if split not in SPLITS:
            raise ValueError(f"{item.file_name}: invalid split {split!r}, expected one of {SPLITS}")
        known_splits[item.patient_id] = split
        batch_names[image_id] = item.file_name

    meta = _metadata_row(item, batch_id, image_id, split)
    pixels = measure_pixels(normalised.image)
    measured = measure_decoded(normalised, len(data), pixels)
    records.append({**meta, **record, "outcome": outcome, **measured})
    return (meta, normalised, pixels) if outcome == "candidate" else None


def _quarantine_rejected(
    decoded: DecodedBatch, validation: ValidationResult, quarantine_dir: Path | None
) -> None:
    for rejected in validation.rejected:
        item = decoded.items[rejected.row]
        decoded.report.rejected.append((item.file_name, rejected.reason_text()))
        logger.warning("rejected %s: %s", item.file_name, rejected.reason_text())
        if quarantine_dir is None:
            continue
        try:
            data = item.read_bytes()
        except OSError as err:
            logger.warning("not copied to the quarantine: %s", _read_error(item, err))
            continue
        quarantine_file(
            quarantine_dir,
            decoded.batch_id,
            item_fields(item),
            data,
            rejected.reasons,
            validation.validation_id,
        )


def import_items(
    items: Iterable[ImportItem],
    store: DatasetStore,
    batch_id: str,
    *,
    quarantine_dir: Path | None = None,
    validation_dir: Path | None = None,
    settings: ValidationSettings | None = None,
    progress: bool = True,
) -> ImportReport:
    """Decode, deduplicate, split and validate a batch, then commit its accepted rows in one step.

    An image whose pixels are already in the dataset adds nothing; under another file name it is
    reported as a duplicate. The data-validation gate (`ladnn.validation`) runs before anything is
    committed: a row failing a blocking row-level check, including a file that does not decode, is
    rejected and copied with its reasons to `quarantine_dir/<batch_id>/`. A failing batch-level
    check raises `BatchValidationError` and commits nothing. With `validation_dir`, the result and
    its Data Docs go to `validation_dir/<validation id>/`, and the dataset's image metrics are
    cached there. A patient keeps the split it already has in the dataset.
    """
    store.remove_orphans()
    decoded = decode_batch(items, store, batch_id, progress=progress)
    cache = validation_dir / REFERENCE_CACHE_NAME if validation_dir is not None else None
    reference = load_reference_metrics(store, cache)
    validation = validate_batch(
        decoded.table,
        reference,
        batch_id=batch_id,
        settings=settings,
        output_root=validation_dir,
        mode="import",
    )
    report = decoded.report
    report.validation_id = validation.validation_id
    report.validation_dir = validation.directory
    report.warnings = validation.warning_lines()
    report.validation = validation
    if not validation.success:
        raise BatchValidationError(validation)

    _quarantine_rejected(decoded, validation, quarantine_dir)
    rejected_rows = validation.rejected_rows
    accepted = [position for position in sorted(decoded.rows) if position not in rejected_rows]
    report.added = [decoded.items[position].file_name for position in accepted]
    if accepted:
        frame = coerce_metadata(pd.DataFrame([decoded.rows[position] for position in accepted]))
        pngs = {decoded.rows[p]["image_id"]: decoded.pngs[p] for p in accepted}
        store.commit(frame, pngs)
        if cache is not None:
            cache_reference_metrics(
                cache, {decoded.rows[p]["image_id"]: decoded.pixels[p] for p in accepted}
            )
    logger.info("%s; validation %s", report.summary(), validation.validation_id)
    return report


def validate_items(
    items: Iterable[ImportItem],
    store: DatasetStore,
    batch_id: str,
    *,
    validation_dir: Path | None = None,
    settings: ValidationSettings | None = None,
    progress: bool = True,
) -> ValidationResult:
    """Run the data-validation gate on a batch against the dataset at `store`, importing nothing.

    Nothing under `store` changes and nothing is quarantined. With `validation_dir`, the result
    and its Data Docs are written to `validation_dir/<validation id>/` and the dataset's image
    metrics are cached there.
    """
    decoded = decode_batch(items, store, batch_id, encode=False, progress=progress)
    cache = validation_dir / REFERENCE_CACHE_NAME if validation_dir is not None else None
    return validate_batch(
        decoded.table,
        load_reference_metrics(store, cache),
        batch_id=batch_id,
        settings=settings,
        output_root=validation_dir,
        mode="dry-run",
    )
