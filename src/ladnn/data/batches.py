"""Read LA-DNN's dated batches: a folder per collection date (`5.16/`) holding a zip per class
(`5.16_nocovidct.zip`, `6.2_covidct.zip`), matched by file name against the growing metadata CSVs
(`New_COVIDCT_meta(update to 5.18).csv`, ...).

An image listed in a metadata file takes its labels, collection date and source from it; an image
listed nowhere gets what the batch implies: its label from the zip's class, lesions unknown, the
folder's date, and the batch as its source. Patients are grouped by `sources.patient_group`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ladnn.data.importer import ImportItem
from ladnn.data.lesions import LESIONS
from ladnn.data.release import LabelRow, read_label_file
from ladnn.data.sources import (
    image_stem,
    list_image_files,
    negative_subtype_of,
    parse_collection_date,
    patient_group,
    source_from_name,
)

__all__ = ["read_ladnn_batch", "find_metadata_files", "zip_class"]

logger = logging.getLogger(__name__)


def zip_class(name: str) -> int:
    """Label of a LA-DNN class zip: `*_nocovidct.zip`/`*noncovid*` is 0, `*_covidct.zip` is 1."""
    lowered = Path(name).name.lower()
    if "nocovid" in lowered or "noncovid" in lowered or "non-covid" in lowered:
        return 0
    if "covid" in lowered:
        return 1
    raise ValueError(
        f"{name}: cannot tell the class from the archive name; expected '*_covidct.zip' or "
        "'*_nocovidct.zip'"
    )


def find_metadata_files(batch: Path) -> list[Path]:
    """LA-DNN metadata CSVs beside the batch: in its folder and the folder above it."""
    folders = [batch if batch.is_dir() else batch.parent]
    folders.append(folders[0].parent)
    found = []
    for folder in folders:
        for path in sorted(folder.glob("*.csv")):
            with path.open("rb") as file:
                head = file.read(64).lstrip(b"\xef\xbb\xbf").lower()
            if head.startswith(b"imgname"):
                found.append(path)
    return found


def _batch_date(batch: Path) -> str | None:
    match = re.match(r"^(\d{1,2}\.\d{1,2})", batch.name)
    return parse_collection_date(match.group(1)) if match else None


def _clean_source(text: str | None) -> str | None:
    """Drop URL fragments and trailing `?`, which spreadsheet autofill turned into counters."""
    if not text:
        return None
    return text.split("#", 1)[0].rstrip("?").strip() or None


def _read_metadata(files: list[Path]) -> dict[str, LabelRow]:
    rows: dict[str, LabelRow] = {}
    for path in files:
        for row in read_label_file(path):
            key = image_stem(row.file_name)
            previous = rows.get(key)
            if previous is not None and (previous.covid, previous.lesions) != (
                row.covid,
                row.lesions,
            ):
                raise ValueError(
                    f"{path}: {row.file_name} has labels that conflict with another metadata file"
                )
            rows[key] = row
    return rows


def read_ladnn_batch(
    batch: str | Path, metadata: list[Path] | None = None
) -> tuple[str, list[ImportItem]]:
    """Return the batch id (`ladnn-YYYY-MM-DD`) and the items of a dated folder or one class zip."""
    batch = Path(batch)
    if not batch.exists():
        raise FileNotFoundError(f"batch not found: {batch}")
    archives = [batch] if batch.is_file() else sorted(batch.glob("*.zip"))
    if not archives:
        raise ValueError(f"{batch}: no class zip archive (*_covidct.zip, *_nocovidct.zip) found")
    metadata_files = metadata if metadata is not None else find_metadata_files(batch)
    rows = _read_metadata(metadata_files)
    folder = batch if batch.is_dir() else batch.parent
    batch_date = _batch_date(folder) or _batch_date(Path(archives[0].name))
    batch_id = f"ladnn-{batch_date}" if batch_date else f"ladnn-{folder.name}"

    items = []
    unlisted = 0
    for archive in archives:
        label = zip_class(archive.name)
        for source_file in list_image_files(archive):
            name = Path(source_file.name).name
            row = rows.get(image_stem(name))
            if row is not None and row.covid != bool(label):
                raise ValueError(
                    f"{archive}: {name} lies in a {'COVID' if label else 'negative'} archive but its "
                    f"metadata labels it {'COVID' if row.covid else 'negative'}"
                )
            if row is None:
                unlisted += 1
            extra = row.extra if row is not None else {}
            lesions = {}
            if row is not None and label == 1 and row.lesions:
                lesions = {code: row.lesions.get(code, 0) for code in LESIONS}
            source = (
                _clean_source(extra.get("sources"))
                or source_from_name(name)
                or f"LA-DNN batch {batch_date or folder.name}"
            )
            items.append(
                ImportItem(
                    file_name=f"{archive.name}/{source_file.name}",
                    read_bytes=source_file.read_bytes,
                    label=label,
                    patient_id=f"ladnn:{patient_group(name)}",
                    source=source,
                    lesions=lesions,
                    negative_subtype=None if label else negative_subtype_of(name, source),
                    collected_on=parse_collection_date(extra.get("collection date")) or batch_date,
                )
            )
    if unlisted:
        logger.info(
            "%d of %d image(s) in %s are in no metadata file: labels from the archive, lesions unknown",
            unlisted,
            len(items),
            batch,
        )
    return batch_id, items
