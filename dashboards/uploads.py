"""Uploaded CT slices: decode them, diagnose them with a model, and contribute them to the inbox.

Every upload is decoded as the importer decodes it (`ladnn.data.images.normalise_image`), DICOM
included. DICOM needs the package pydicom; without it a DICOM upload gets a message saying so.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from ladnn.data.dicom import DICOM_SUFFIXES, is_dicom
from ladnn.data.images import ImageDecodeError, NormalisedImage, encode_png, normalise_image
from ladnn.evaluation.registered import LoadedModel
from ladnn.models.ladnn import OUTPUT_NAMES
from ladnn.training.images import load_image_tensor
from ladnn.training.trainer import predict

__all__ = [
    "UPLOAD_TYPES",
    "DICOM_AVAILABLE",
    "Upload",
    "Diagnosis",
    "decode_upload",
    "diagnose_upload",
    "write_contribution",
]

UPLOAD_TYPES = ("png", "jpg", "jpeg", "dcm")
DICOM_AVAILABLE = importlib.util.find_spec("pydicom") is not None
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
# Formats whose uploaded bytes are stored as they came; every other format is stored as PNG.
_KEPT_FORMATS = ("PNG", "JPEG")
_HASH_DIGITS = 16


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes

    @property
    def is_dicom(self) -> bool:
        return is_dicom(self.data) or self.name.lower().endswith(DICOM_SUFFIXES)


def decode_upload(upload: Upload) -> tuple[NormalisedImage, bytes]:
    """Decode an upload; return the image and the encoded bytes the model and inbox use.

    PNG and JPEG uploads keep their bytes. A DICOM slice, windowed by
    `ladnn.data.dicom.decode_dicom`, and any other format become the canonical PNG. Raises
    `ImageDecodeError` (a ValueError) naming the file when it is not a usable image.
    """
    if upload.is_dicom and not DICOM_AVAILABLE:
        raise ImageDecodeError(
            f"{upload.name}: DICOM files need the Python package pydicom, which is not installed "
            "on this server; install it (pip install pydicom) or upload a PNG or JPEG export"
        )
    normalised = normalise_image(upload.data, upload.name)
    if normalised.original_format in _KEPT_FORMATS:
        return normalised, upload.data
    return normalised, encode_png(normalised.image)


@dataclass
class Diagnosis:
    name: str
    # Sigmoid probability per output name: "covid", then the lesions of an LA-DNN model.
    probabilities: dict[str, float]
    threshold: float
    # The bytes the model scored (PNG for a DICOM upload).
    image_bytes: bytes

    @property
    def covid_probability(self) -> float:
        return self.probabilities["covid"]

    @property
    def positive(self) -> bool:
        return self.covid_probability >= self.threshold


def diagnose_upload(loaded: LoadedModel, upload: Upload) -> Diagnosis:
    """Score one upload as `ladnn diagnose` scores a file; raise ImageDecodeError for a bad one."""
    normalised, data = decode_upload(upload)
    pixels = load_image_tensor(normalised.image, int(loaded.spec["image_size"])).unsqueeze(0)
    row = predict(
        loaded.model,
        pixels,
        tuple(loaded.spec["mean"]),
        tuple(loaded.spec["std"]),
        tta=bool(loaded.spec.get("tta", False)),
    )[0]
    names = OUTPUT_NAMES[: len(row)]
    probabilities = {name: float(value) for name, value in zip(names, row, strict=True)}
    return Diagnosis(upload.name, probabilities, loaded.threshold, data)


def _content_file_name(data: bytes) -> str:
    """Name a stored upload by the SHA-256 of its bytes, never by the name the uploader chose."""
    suffix = ".jpg" if data.startswith(b"\xff\xd8") else ".png"
    return f"{hashlib.sha256(data).hexdigest()[:_HASH_DIGITS]}{suffix}"


def write_contribution(
    inbox: Path,
    uploads: list[Upload],
    *,
    label: str,
    contributor: str,
    source: str,
    today: date | None = None,
) -> Path:
    """Write decodable uploads and their metadata CSV as one batch folder in the inbox.

    The CSV follows the contributor format of docs/data-format.md (`file_name,label,source,
    collected_on`). Each file is stored as `<first 16 hex digits of its SHA-256>.<png|jpg>`, so no
    name chosen by the uploader reaches the disk, and identical uploads are stored once. The
    folder is written under a hidden name and renamed when complete, because the inbox flow skips
    hidden entries and would otherwise ingest a half-written batch. DICOM uploads are stored as
    PNG, which the importer reads. Raises `ImageDecodeError` naming the first upload that does
    not decode, before anything is written.
    """
    if label not in ("covid", "negative"):
        raise ValueError(f"invalid label {label!r}: expected covid or negative")
    if not uploads:
        raise ValueError("no images to contribute")
    prepared: dict[str, bytes] = {}
    for upload in uploads:
        _, data = decode_upload(upload)
        prepared.setdefault(_content_file_name(data), data)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    folder_name = f"dashboard-{stamp}-{_UNSAFE_CHARACTERS.sub('-', contributor).strip('-')}"
    inbox.mkdir(parents=True, exist_ok=True)
    partial = inbox / f".{folder_name}.partial"
    final = inbox / folder_name
    partial.mkdir()
    try:
        for file_name, data in prepared.items():
            (partial / file_name).write_bytes(data)
        with (partial / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file_name", "label", "source", "collected_on"])
            collected_on = (today or datetime.now(UTC).date()).isoformat()
            for file_name in prepared:
                writer.writerow([file_name, label, source, collected_on])
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
