"""Read contributed batches (a folder or zip with a metadata CSV) and single uploaded images.

The contributor CSV schema is documented in `docs/data-format.md`: `file_name` and `label` are
required (or `label` for the whole batch from the command line); lesion columns under any known
spelling, a `lesions` list, `patient_id`, `source`, `negative_subtype`, `collected_on` and
`caption` are optional. A column outside the schema stops the import. A value that cannot be read
(a label, a lesion name or value, a subtype or a date) is kept as given, so the data-validation
gate rejects that row with the reason and the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pandas as pd

from ladnn.data.captions import extract_lesions
from ladnn.data.encoding import read_csv_any_encoding
from ladnn.data.importer import NEGATIVE_SUBTYPES, ImportItem
from ladnn.data.lesions import LESIONS, UnknownLesionError, canonical_lesion
from ladnn.data.sources import list_image_files, parse_collection_date, patient_group

__all__ = [
    "NEGATIVE_SUBTYPES",
    "CONTRIBUTION_COLUMNS",
    "parse_label",
    "read_contribution",
    "read_uploads",
]

logger = logging.getLogger(__name__)

CONTRIBUTION_COLUMNS = (
    "file_name",
    "label",
    "lesions",
    "patient_id",
    "source",
    "negative_subtype",
    "collected_on",
    "caption",
)
_LABELS = {"1": 1, "0": 0, "covid": 1, "covid-19": 1, "positive": 1, "negative": 0, "non-covid": 0}


def parse_label(value: object, where: str) -> int:
    text = str(value).strip().lower()
    if text in _LABELS:
        return _LABELS[text]
    raise ValueError(f"{where}: invalid label {value!r}: expected 1/0, covid or negative")


def _read_label(value: object) -> int | str:
    """Return the label 0 or 1, or the text as given when it is neither."""
    text = str(value).strip()
    return _LABELS.get(text.lower(), text)


def _read_lesion(value: object) -> int | str | None:
    """Return 1, 0, None for unknown (an empty cell), or otherwise the text as given."""
    if value is None or pd.isna(value) or not str(value).strip():
        return None
    text = str(value).strip()
    if text.lower() in ("1", "1.0", "yes", "true"):
        return 1
    if text.lower() in ("0", "0.0", "no", "false"):
        return 0
    return text


_LIST_SEPARATORS = re.compile(r"[;,|]")


def _read_lesion_list(value: object) -> dict[str, int | str] | None:
    """Read a `lesions` cell: the lesions present, separated by `;`, `,` or `|`; `none` for none.

    Listed lesions are 1 and the other four 0. An unknown name stays under its own name, which
    rejects the row. An empty cell is None (lesions unknown).
    """
    if value is None or pd.isna(value) or not str(value).strip():
        return None
    names = [name.strip() for name in _LIST_SEPARATORS.split(str(value)) if name.strip()]
    if [name.lower() for name in names] == ["none"]:
        names = []
    lesions: dict[str, int | str] = dict.fromkeys(LESIONS, 0)
    for name in names:
        try:
            lesions[canonical_lesion(name)] = 1
        except UnknownLesionError:
            lesions[name] = 1
    return lesions


def _find_csv(path: Path) -> Path | None:
    """The metadata CSV beside the images: none, or exactly one; several must be chosen by name."""
    folder = path if path.is_dir() else path.parent
    candidates = sorted(folder.glob("*.csv"))
    if len(candidates) > 1:
        raise ValueError(
            f"{folder}: found {len(candidates)} CSV files {[c.name for c in candidates]}; "
            "choose one with --metadata"
        )
    return candidates[0] if candidates else None


def _read_rows(csv_path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    # Without index_col=False, pandas would take the first column as the index of every row
    # that has one field too many, silently shifting the columns.
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame, encoding = read_csv_any_encoding(csv_path, index_col=False)
        except pd.errors.ParserWarning as err:
            raise ValueError(
                f"{csv_path}: a row has more fields than the header; quote values that contain "
                f"commas ({err})"
            ) from err
    frame.columns = [str(column).strip() for column in frame.columns]
    logger.info("read %s (%s): %d rows", csv_path, encoding, len(frame))
    if "file_name" not in frame.columns:
        raise ValueError(
            f"{csv_path}: missing required column 'file_name'; columns are {list(frame.columns)}"
        )
    lesion_columns: dict[str, str] = {}
    unknown = []
    for column in frame.columns:
        if column in CONTRIBUTION_COLUMNS:
            continue
        try:
            lesion_columns[column] = canonical_lesion(column, source=str(csv_path))
        except UnknownLesionError:
            unknown.append(column)
    if unknown:
        raise ValueError(
            f"{csv_path}: unknown column(s) {unknown}: neither a column of the contributor schema "
            f"{list(CONTRIBUTION_COLUMNS)} nor a lesion name (one of {list(LESIONS)} or a known "
            "spelling such as 'Aibr' or 'InSep'); rename or remove them (docs/data-format.md)"
        )
    duplicated = frame[frame["file_name"].duplicated(keep=False)]
    if not duplicated.empty:
        conflicting = duplicated.drop_duplicates()
        if conflicting["file_name"].duplicated().any():
            names = sorted(set(conflicting.loc[conflicting["file_name"].duplicated(), "file_name"]))
            raise ValueError(f"{csv_path}: conflicting rows for {names[:5]}")
        frame = frame.drop_duplicates()
    return frame, lesion_columns


def _read_date(text: str | None) -> str | None:
    """Return the ISO date of `text`, or the text as given when it is not a date."""
    try:
        return parse_collection_date(text)
    except ValueError:
        return text


def read_contribution(
    batch: str | Path,
    *,
    metadata: Path | None = None,
    label: int | None = None,
    source: str | None = None,
    batch_id: str | None = None,
    lesions_from_captions: bool = False,
) -> tuple[str, list[ImportItem]]:
    """Return the batch id and items of a contributed folder or zip and its metadata CSV.

    Rows are matched by `file_name`, as a path inside the batch or as a bare file name. An image
    without a row takes `label` (an error when none is given) and has unknown lesions. With
    `lesions_from_captions`, a COVID image that has a caption but no lesion label gets the lesions
    that `ladnn.data.captions.extract_lesions` reads from its caption.
    """
    batch = Path(batch)
    files = list_image_files(batch)
    if not files:
        raise ValueError(f"{batch}: no image files found")
    csv_path = metadata or _find_csv(batch)
    rows: dict[str, dict] = {}
    lesion_columns: dict[str, str] = {}
    if csv_path is not None:
        frame, lesion_columns = _read_rows(csv_path)
        for record in frame.to_dict("records"):
            rows[str(record["file_name"]).strip()] = record
    chosen_id = batch_id or f"contrib-{batch.stem}"
    default_source = source or f"contribution {batch.name}"
    today = datetime.now(UTC).date().isoformat()

    items, missing_label, matched = [], [], set()
    for source_file in files:
        base = PurePosixPath(source_file.name).name
        key = source_file.name if source_file.name in rows else base
        record = rows.get(key)
        if record is not None:
            matched.add(key)
        raw_label = record.get("label") if record is not None else None
        if raw_label is not None and not pd.isna(raw_label):
            item_label = _read_label(raw_label)
        elif label is not None:
            item_label = label
        else:
            missing_label.append(source_file.name)
            continue

        def field_of(name: str, record: dict | None = record) -> str | None:
            if record is None or name not in record or pd.isna(record[name]):
                return None
            return str(record[name]).strip() or None

        lesions = (record is not None and _read_lesion_list(record.get("lesions"))) or {}
        for column, code in lesion_columns.items():
            value = _read_lesion(record.get(column)) if record is not None else None
            if value is None:
                continue
            if code in lesions and lesions[code] != value and "lesions" in record:
                value = f"{value} in column {column!r} but {lesions[code]} in the lesions list"
            lesions[code] = value
        caption = field_of("caption")
        if lesions_from_captions and not lesions and caption and item_label == 1:
            lesions = extract_lesions(caption)
        subtype = field_of("negative_subtype")
        items.append(
            ImportItem(
                file_name=f"{batch.name}/{source_file.name}",
                read_bytes=source_file.read_bytes,
                label=item_label,
                patient_id=field_of("patient_id") or f"{chosen_id}:{patient_group(base)}",
                source=field_of("source") or default_source,
                lesions=lesions,
                negative_subtype=subtype,
                collected_on=_read_date(field_of("collected_on")) or today,
                caption=caption,
            )
        )
    if missing_label:
        raise ValueError(
            f"{batch}: {len(missing_label)} image(s) have no label in the metadata and no batch label "
            f"was given (--label): {missing_label[:5]}"
        )
    unmatched = set(rows) - matched
    if unmatched:
        logger.warning(
            "%s: %d metadata row(s) match no image: %s",
            csv_path,
            len(unmatched),
            sorted(unmatched)[:5],
        )
    return chosen_id, items


def read_uploads(
    paths: list[Path],
    *,
    label: int,
    patient_id: str | None = None,
    source: str = "upload",
    batch_id: str | None = None,
) -> tuple[str, list[ImportItem]]:
    """Items for single uploaded images; each upload is its own patient unless `patient_id` is given."""
    today = datetime.now(UTC).date().isoformat()
    chosen_id = batch_id or f"upload-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    items = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"upload not found: {path}")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        items.append(
            ImportItem(
                file_name=path.name,
                read_bytes=lambda data=data: data,
                label=label,
                patient_id=patient_id or f"upload:{digest}",
                source=source,
                collected_on=today,
            )
        )
    return chosen_id, items
