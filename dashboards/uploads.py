"""Uploaded CT slices: decode them, diagnose them with a model, and contribute them to the inbox.

PNG and JPEG are decoded as the importer decodes them (`ladnn.data.images.normalise_image`).
DICOM needs the optional package pydicom; without it a DICOM upload gets a message saying so.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
from PIL import Image

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
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_AVAILABLE = importlib.util.find_spec("pydicom") is not None
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes

    @property
    def is_dicom(self) -> bool:
        # DICOM Part 10 files carry "DICM" after a 128-byte preamble.
        return self.name.lower().endswith(DICOM_SUFFIXES) or self.data[128:132] == b"DICM"


def _dicom_to_png(upload: Upload) -> bytes:
    """Window a DICOM slice to 8-bit grey with its own VOI LUT or window and encode it as PNG."""
    if not DICOM_AVAILABLE:
        raise ImageDecodeError(
            f"{upload.name}: DICOM files need the Python package pydicom, which is not installed "
            "on this server; install it (pip install pydicom) or upload a PNG or JPEG export"
        )
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(upload.data))
        pixels = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError) as err:
        raise ImageDecodeError(f"{upload.name}: not a readable DICOM image ({err})") from err
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 2:
        raise ImageDecodeError(
            f"{upload.name}: expected a single 2-D DICOM slice, got pixel data of shape "
            f"{pixels.shape}"
        )
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return encode_png(Image.fromarray(scaled.round().astype(np.uint8), mode="L"))


def decode_upload(upload: Upload) -> tuple[NormalisedImage, bytes]:
    """Decode an upload; return the image and the encoded bytes the model and inbox use.

    Raises `ImageDecodeError` (a ValueError) naming the file when it is not a usable image.
    """
    data = _dicom_to_png(upload) if upload.is_dicom else upload.data
    return normalise_image(data, upload.name), data


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


def _safe_file_name(name: str, used: set[str], suffix: str | None = None) -> str:
    stem, original_suffix = os.path.splitext(Path(name).name)
    stem = _UNSAFE_CHARACTERS.sub("-", stem).strip("-.") or "slice"
    chosen_suffix = suffix or original_suffix.lower()
    candidate = f"{stem}{chosen_suffix}"
    counter = 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}-{counter}{chosen_suffix}"
    used.add(candidate)
    return candidate


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
    collected_on`). The folder is written under a hidden name and renamed when complete, because
    the inbox flow skips hidden entries and would otherwise ingest a half-written batch. DICOM
    uploads are stored as PNG, which the importer reads. Raises `ImageDecodeError` naming the
    first upload that does not decode, before anything is written.
    """
    if label not in ("covid", "negative"):
        raise ValueError(f"invalid label {label!r}: expected covid or negative")
    if not uploads:
        raise ValueError("no images to contribute")
    prepared = []
    used: set[str] = set()
    for upload in uploads:
        _, data = decode_upload(upload)
        file_name = _safe_file_name(upload.name, used, ".png" if upload.is_dicom else None)
        prepared.append((file_name, data))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    folder_name = f"dashboard-{stamp}-{_UNSAFE_CHARACTERS.sub('-', contributor).strip('-')}"
    inbox.mkdir(parents=True, exist_ok=True)
    partial = inbox / f".{folder_name}.partial"
    final = inbox / folder_name
    partial.mkdir()
    try:
        for file_name, data in prepared:
            (partial / file_name).write_bytes(data)
        with (partial / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file_name", "label", "source", "collected_on"])
            collected_on = (today or datetime.now(UTC).date()).isoformat()
            for file_name, _ in prepared:
                writer.writerow([file_name, label, source, collected_on])
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
