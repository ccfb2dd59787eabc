"""Read the COVID-CT release with LA-DNN's lesion labels, official split and patient metadata.

Layout: `CT_COVID/` and `CT_NonCOVID/` hold the images; `lesion-labels/` holds LA-DNN's
`train_meta.csv`, `val_meta.csv` and `test_meta.csv` (official patient-level split and lesion codes)
and `COVID-CT-MetaInfo_new.csv` (GBK-encoded: patient and caption of every COVID image).

Lesions: a COVID image with at least one lesion code has the listed lesions 1 and the others 0; a
COVID image without any code and every negative image have all five lesions unknown, because LA-DNN
annotated lesions on COVID images only.

Patients: COVID images take `Patient N` from the metadata. Negative images have no patient record,
so crops of one figure (file names `<figure>%<k>.<ext>`) are grouped as one patient, and every other
image is a patient of its own. PNG and JPEG figures are numbered independently, so `14.png` and
`14%0.jpg` are different patients.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ladnn.data.encoding import read_csv_any_encoding
from ladnn.data.importer import ImportItem
from ladnn.data.lesions import LESIONS, canonical_lesion, is_covid_header
from ladnn.data.sources import IMAGE_SUFFIXES, image_stem

__all__ = ["RELEASE_BATCH_ID", "RELEASE_SOURCE", "read_release", "LabelRow", "read_label_file"]

logger = logging.getLogger(__name__)

RELEASE_BATCH_ID = "covid-ct-release"
RELEASE_SOURCE = "UCSD-AI4H/COVID-CT"
SPLIT_FILES = {"train": "train_meta.csv", "val": "val_meta.csv", "test": "test_meta.csv"}
META_INFO_FILE = "COVID-CT-MetaInfo_new.csv"


@dataclass(frozen=True)
class LabelRow:
    file_name: str
    covid: bool
    # Lesions marked present; an unmarked lesion is absent only if the row marks some lesion.
    lesions: dict[str, int]
    # Other columns the file has (collection date, sources), keyed by lower-case header.
    extra: dict[str, str] = field(default_factory=dict)


# Headers of LA-DNN label files that are not lesions.
_EXTRA_COLUMNS = {"collection date", "sources", "source", "patient", "caption"}
_TRUE_CELLS = {"1", "x", "yes", "true", "y"}


def _cell_marks_lesion(value: str, code: str, column: str, where: str) -> bool:
    """Decide whether a lesion cell is set; a code in the cell must name the column's lesion."""
    text = value.strip()
    if not text or text == "0":
        return False
    if text.lower() in _TRUE_CELLS:
        return True
    named = canonical_lesion(text, source=where)
    if named != code:
        raise ValueError(
            f"{where}: cell {text!r} in column {column!r} names lesion {named}, not {code}"
        )
    return True


def read_label_file(path: Path) -> list[LabelRow]:
    """Read a LA-DNN label CSV: `imgname`, a COVID column, columns named after lesions, and
    optionally `Collection date` and `Sources`.

    A lesion cell counts as positive when it holds the lesion's code in any known spelling (or 1,
    x, yes). Lesion headers are mapped to canonical codes, so an unknown header stops the import
    with the file named.
    """
    frame, _ = read_csv_any_encoding(path)
    if len(frame.columns) == 0 or frame.columns[0].strip().lower() != "imgname":
        raise ValueError(
            f"{path}: expected a first column 'imgname', got {list(frame.columns)[:3]}"
        )
    covid_column = None
    lesion_columns: dict[str, str] = {}
    extra_columns: list[str] = []
    for column in frame.columns[1:]:
        if is_covid_header(column):
            covid_column = column
        elif column.strip().lower() in _EXTRA_COLUMNS:
            extra_columns.append(column)
        elif column.strip() and not column.startswith("Unnamed"):
            lesion_columns[column] = canonical_lesion(column, source=str(path))
    rows = []
    for line, record in enumerate(frame.to_dict("records"), start=2):
        name = record[frame.columns[0]]
        if pd.isna(name) or not str(name).strip():
            continue
        where = f"{path} line {line}"
        lesions_present = {
            code: 1
            for column, code in lesion_columns.items()
            if pd.notna(record[column])
            and _cell_marks_lesion(str(record[column]), code, column, where)
        }
        covid = covid_column is not None and pd.notna(record[covid_column])
        extra = {
            column.strip().lower(): str(record[column]).strip()
            for column in extra_columns
            if pd.notna(record[column])
        }
        rows.append(LabelRow(str(name).strip(), covid, lesions_present, extra))
    return rows


def _read_meta_info(path: Path) -> dict[str, tuple[str, str | None]]:
    """Map each COVID file stem to (patient, caption) from the GBK-encoded metadata file."""
    frame, encoding = read_csv_any_encoding(path, header=None, skiprows=1)
    logger.info("read %s as %s", path.name, encoding)
    # Columns: file name, patient, the COVID label, five lesions, caption.
    if frame.shape[1] < 9:
        raise ValueError(f"{path}: expected at least 9 columns, found {frame.shape[1]}")
    info = {}
    for record in frame.itertuples(index=False):
        name, patient, caption = record[0], record[1], record[8]
        if pd.isna(name):
            continue
        caption_text = None if pd.isna(caption) else str(caption).strip()
        if caption_text and caption_text.startswith("['") and caption_text.endswith("']"):
            caption_text = caption_text[2:-2].strip()
        # Some names in this file lack their extension, so entries are keyed by stem.
        info[image_stem(str(name).strip())] = (str(patient).strip(), caption_text or None)
    return info


def _source_of(file_name: str) -> str:
    """Name the publication a COVID crop comes from: a bioRxiv/medRxiv DOI when the name has one."""
    match = re.match(r"^(\d{4}\.\d{2}\.\d{2}\.\d+)", file_name)
    if match:
        return f"doi:10.1101/{match.group(1)}"
    match = re.match(r"^(.*?)-p\d+", file_name)
    return match.group(1) if match else RELEASE_SOURCE


def _figure_of(file_name: str) -> str:
    """Name the figure a negative crop comes from: `14%2.jpg` -> `14.jpg`.

    The extension stays in the key because the release numbers its PNG and JPEG figures
    independently: `14.png` and `14%0.jpg` come from different figures and official splits.
    """
    path = Path(file_name)
    return path.stem.split("%", 1)[0] + path.suffix.lower()


def read_release(release_dir: str | Path) -> list[ImportItem]:
    """List the release's images with their labels, lesions, patients, captions and official split."""
    release = Path(release_dir)
    labels_dir = release / "lesion-labels"
    for required in ("CT_COVID", "CT_NonCOVID"):
        if not (release / required).is_dir():
            raise FileNotFoundError(
                f"{release}: missing folder {required}/; expected the COVID-CT release layout "
                "(CT_COVID/, CT_NonCOVID/, lesion-labels/)"
            )

    official: dict[str, tuple[str, LabelRow]] = {}
    for split, file_name in SPLIT_FILES.items():
        path = labels_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(f"missing official split file {path}")
        for row in read_label_file(path):
            if row.file_name in official:
                raise ValueError(f"{path}: {row.file_name} is already listed in another split file")
            official[row.file_name] = (split, row)
    meta_info = _read_meta_info(labels_dir / META_INFO_FILE)

    items = []
    for folder, label in (("CT_COVID", 1), ("CT_NonCOVID", 0)):
        for path in sorted((release / folder).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.name not in official:
                raise ValueError(f"{path}: image is not listed in any official split file")
            split, label_row = official[path.name]
            if label_row.covid != bool(label):
                raise ValueError(
                    f"{path}: the split file labels it {'COVID' if label_row.covid else 'negative'} "
                    f"but it lies in {folder}/"
                )
            if label:
                patient, caption = meta_info.get(image_stem(path.name), (None, None))
                if patient is None:
                    raise ValueError(f"{path}: COVID image missing from {META_INFO_FILE}")
                patient_id = f"covid-ct:{patient}"
                source = _source_of(path.name)
                lesions = (
                    {code: label_row.lesions.get(code, 0) for code in LESIONS}
                    if label_row.lesions
                    else {}
                )
            else:
                if label_row.lesions:
                    raise ValueError(
                        f"{path}: a negative image carries lesion labels {label_row.lesions}"
                    )
                patient_id = f"covid-ct:noncovid-{_figure_of(path.name)}"
                caption, source, lesions = None, RELEASE_SOURCE, {}
            items.append(
                ImportItem(
                    file_name=f"{folder}/{path.name}",
                    read_bytes=path.read_bytes,
                    label=label,
                    patient_id=patient_id,
                    source=source,
                    lesions=lesions,
                    caption=caption,
                    split=split,
                )
            )
    unlisted = set(official) - {Path(item.file_name).name for item in items}
    if unlisted:
        raise ValueError(
            f"{len(unlisted)} image(s) of the split files are missing from {release}: "
            f"{sorted(unlisted)[:5]}"
        )
    return items
