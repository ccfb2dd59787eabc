"""DICOM uploads on the Diagnose page: real CT slices wrapped as DICOM, windowed to 8-bit grey."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dashboards.uploads import Upload, decode_upload
from ladnn.data.images import ImageDecodeError


def _dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: int = 1) -> bytes:
    """A CT DICOM file holding `pixels` as stored values with slope 1, intercept -1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PhotometricInterpretation = photometric
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -1024
    dataset.WindowCenter = -600
    dataset.WindowWidth = 1500
    stack = np.stack([pixels] * frames) if frames > 1 else pixels
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelData = stack.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ct_values(release_dir: Path) -> np.ndarray:
    """A real release slice mapped to stored CT values 0-2000 (-1024 to 976 HU)."""
    path = release_dir / "CT_COVID" / "2020.01.24.919183-p27-132.png"
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return np.rint(grey / 255.0 * 2000).astype(np.uint16)


def test_dicom_slice_decodes(ct_values):
    image, png = decode_upload(Upload("slice.dcm", _dicom_bytes(ct_values)))
    assert (image.width, image.height) == (ct_values.shape[1], ct_values.shape[0])
    assert png.startswith(b"\x89PNG")
    grey = np.asarray(image.image.convert("L"), dtype=np.float64)
    assert grey.std() > 10


def test_dicom_without_extension_detected(ct_values):
    image, _ = decode_upload(Upload("upload-17", _dicom_bytes(ct_values)))
    assert image.width == ct_values.shape[1]


def test_monochrome1_is_inverted(ct_values):
    normal, _ = decode_upload(Upload("a.dcm", _dicom_bytes(ct_values, "MONOCHROME2")))
    inverted, _ = decode_upload(Upload("b.dcm", _dicom_bytes(ct_values, "MONOCHROME1")))
    a = np.asarray(normal.image.convert("L"), dtype=np.int32)
    b = np.asarray(inverted.image.convert("L"), dtype=np.int32)
    assert np.abs(a + b - 255).max() <= 1


def test_multiframe_dicom_rejected(ct_values):
    with pytest.raises(ImageDecodeError, match=r"^cine\.dcm: .*2-D"):
        decode_upload(Upload("cine.dcm", _dicom_bytes(ct_values, frames=3)))


def test_corrupt_dicom_rejected():
    data = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage"
    with pytest.raises(ImageDecodeError, match=r"^bad\.dcm: "):
        decode_upload(Upload("bad.dcm", data))
