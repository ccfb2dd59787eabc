"""Fuzz the image and metadata readers with Hypothesis: random bytes and mutated real files.

Each reader must either return a result or raise its documented error (`ImageDecodeError` for
images, `ValueError` for metadata) with a message that names the file. Any other exception is a
crash. The default suite draws a few examples per property; the `long` marker runs many:
`.venv/bin/python -m pytest -m long tests/test_fuzz_readers.py` (`LADNN_FUZZ_EXAMPLES` per
property, default 2000).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import _datasets_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ladnn.data.contributions import read_contribution
from ladnn.data.encoding import read_text
from ladnn.data.images import ImageDecodeError, normalise_image

SHORT_EXAMPLES = 40
LONG_EXAMPLES = int(os.environ.get("LADNN_FUZZ_EXAMPLES", "2000"))
SHORT = settings(
    max_examples=SHORT_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG = settings(SHORT, max_examples=LONG_EXAMPLES)
CSV_COLUMNS = ["file_name", "label", "patient_id", "source", "GGO", "Csld", "collected_on", "x"]


def _small_grey() -> np.ndarray:
    # Seeds are built at import, before fixtures exist, from the folder the `release_dir` fixture uses.
    path = sorted((_datasets_dir() / "covid-ct" / "CT_COVID").glob("*.png"))[0]
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((48, 48))
        return np.asarray(grey)


def _dicom(grey: np.ndarray) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.Rows, dataset.Columns = grey.shape
    dataset.PixelData = (grey.astype(np.uint16) * 8).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _seed_files() -> dict[str, bytes]:
    """Small encodings of one real release slice in every format the reader accepts."""
    grey = _small_grey()
    files = {"slice.dcm": _dicom(grey)}
    for name, image_format, mode in (
        ("slice.png", "PNG", "L"),
        ("slice-rgb.png", "PNG", "RGB"),
        ("slice.jpg", "JPEG", "L"),
        ("slice.tif", "TIFF", "L"),
        ("slice.gif", "GIF", "L"),
        ("slice.bmp", "BMP", "RGB"),
        ("slice.webp", "WEBP", "RGB"),
    ):
        buffer = io.BytesIO()
        Image.fromarray(grey).convert(mode).save(buffer, format=image_format)
        files[name] = buffer.getvalue()
    return files


SEEDS = _seed_files()


@st.composite
def mutated_files(draw) -> tuple[str, bytes]:
    """A seed file with a few bytes replaced, inserted or cut off."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["replace", "insert", "truncate"]))
        position = draw(st.integers(0, len(data) - 1))
        if action == "replace":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[max(position, 1) :]
    return name, bytes(data)


def check_image(name: str, data: bytes) -> None:
    try:
        normalised = normalise_image(data, name)
    except ImageDecodeError as err:
        assert str(err).startswith(f"{name}: "), str(err)
        return
    assert normalised.image.mode == "RGB"
    assert normalised.image.width * normalised.image.height > 0


@SHORT
@given(data=st.binary(max_size=2048), name=st.sampled_from(["x.png", "x.jpg", "x.dcm"]))
def test_fuzz_random_bytes_image(data: bytes, name: str):
    check_image(name, data)


@SHORT
@given(file=mutated_files())
def test_fuzz_mutated_image(file: tuple[str, bytes]):
    check_image(*file)


@pytest.mark.long
@LONG
@given(data=st.binary(max_size=4096), name=st.sampled_from(["x.png", "x.jpg", "x.dcm"]))
def test_fuzz_random_bytes_image_long(data: bytes, name: str):
    check_image(name, data)


@pytest.mark.long
@LONG
@given(file=mutated_files())
def test_fuzz_mutated_image_long(file: tuple[str, bytes]):
    check_image(*file)


# --- metadata CSVs ---

cells = st.one_of(
    st.sampled_from(["covid", "negative", "1", "0", "", "slice.png", "5.14", "2020-02-30"]),
    st.text(max_size=12),
)


@st.composite
def metadata_files(draw) -> bytes:
    """A CSV of random columns and cells in a random encoding, or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    columns = draw(st.lists(st.sampled_from(CSV_COLUMNS), min_size=1, max_size=6))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=8), max_size=5))
    lines = [",".join(columns)] + [",".join(row) for row in rows]
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "gb18030", "cp1252"]))
    return text.encode(encoding, errors="replace")


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-batch")
    (folder / "slice.png").write_bytes(SEEDS["slice.png"])
    return folder


def check_metadata(folder: Path, data: bytes) -> None:
    csv_path = folder / "metadata.csv"
    csv_path.write_bytes(data)
    try:
        _, items = read_contribution(folder, metadata=csv_path, label=None)
    except ValueError as err:
        assert str(folder) in str(err), str(err)
        return
    assert len(items) == 1
    assert items[0].label in (0, 1)


def check_text(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        text, _ = read_text(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert isinstance(text, str)


@SHORT
@given(data=metadata_files())
def test_fuzz_metadata_csv(batch_folder: Path, data: bytes):
    check_metadata(batch_folder, data)


@SHORT
@given(data=st.binary(max_size=512))
def test_fuzz_text_encoding(batch_folder: Path, data: bytes):
    check_text(batch_folder / "notes.txt", data)


@pytest.mark.long
@LONG
@given(data=metadata_files())
def test_fuzz_metadata_csv_long(batch_folder: Path, data: bytes):
    check_metadata(batch_folder, data)


@pytest.mark.long
@LONG
@given(data=st.binary(max_size=2048))
def test_fuzz_text_encoding_long(batch_folder: Path, data: bytes):
    check_text(batch_folder / "notes.txt", data)
