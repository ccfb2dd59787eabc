"""Decode a single-slice DICOM file to 8-bit grey the way a radiologist's viewer would show it.

Stored values go through the modality LUT (Rescale Slope and Intercept, so CT values become
Hounsfield units), then through the file's own VOI LUT or window. A CT slice without either gets the
lung window (centre -600 HU, width 1500 HU). Any other slice without one is rescaled over its own
range. MONOCHROME1 slices (0 is white) are inverted so that 0 is black, as in every other image.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "DICOM_SUFFIXES",
    "LUNG_WINDOW",
    "DicomDecodeError",
    "DicomSlice",
    "is_dicom",
    "decode_dicom",
]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
# (centre, width) in Hounsfield units: the usual lung window of chest-CT viewers.
LUNG_WINDOW = (-600.0, 1500.0)


class DicomDecodeError(ValueError):
    """A DICOM file that cannot be turned into one 2-D slice."""


@dataclass(frozen=True)
class DicomSlice:
    image: Image.Image
    # Grey-level mapping applied: "voi-lut", "window", "lung-window" or "own-range".
    windowing: str
    # (centre, width) of the window applied, in modality units; None for a LUT or own range.
    window: tuple[float, float] | None
    transfer_syntax: str
    # Bits per stored sample of the file (12 or 16 for most CT).
    bits_stored: int


def is_dicom(data: bytes) -> bool:
    """Check for the DICOM Part 10 prefix: "DICM" after a 128-byte preamble."""
    return data[128:132] == b"DICM"


def _first_value(value: object) -> float:
    """Return the first of a multi-valued DICOM number (several windows may be listed)."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _window_of(dataset) -> tuple[float, float] | None:
    """Return the dataset's first (centre, width), or None when absent or unusable."""
    if dataset.get("WindowCenter") is None or dataset.get("WindowWidth") is None:
        return None
    try:
        centre, width = _first_value(dataset.WindowCenter), _first_value(dataset.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(centre) and np.isfinite(width)) or width < 1:
        return None
    return centre, width


def _apply_window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """Map modality values to 0-255 with the DICOM VOI functions (PS3.3 C.11.2.1.2)."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    if function == "LINEAR_EXACT":
        low, span = centre - width / 2, width
    else:
        # LINEAR: the standard's half-pixel offsets.
        low, span = centre - 0.5 - (width - 1) / 2, width - 1
    return np.clip((values - low) / span, 0.0, 1.0) * 255.0


def _own_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _check_decodable(dataset, name: str) -> str:
    """Return the transfer syntax name; raise when pydicom has no decoder for it here."""
    from pydicom.pixels.decoders.base import get_decoder

    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return "implicit VR little endian (no file meta)"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomDecodeError(
            f"{name}: DICOM transfer syntax {syntax} ({syntax.name}) is not supported for pixel "
            "data; export the slice uncompressed or as PNG"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no decoder plugin"
        raise DicomDecodeError(
            f"{name}: DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded on this "
            f"machine ({missing}); install one of those packages or export the slice uncompressed"
        )
    return str(syntax.name)


def decode_dicom(data: bytes, name: str, *, max_pixels: int) -> DicomSlice:
    """Decode a single-frame DICOM slice in `data` (the bytes of file `name`) to 8-bit grey or RGB.

    Raises `DicomDecodeError` naming the file and the problem for a file that is not DICOM, has no
    pixel data, contains several frames, declares more than `max_pixels` pixels or uses a transfer
    syntax that no installed decoder reads.
    """
    try:
        return _decode(data, name, max_pixels)
    except DicomDecodeError:
        raise
    except Exception as err:
        # pydicom converts element values lazily, so a malformed element raises at first access,
        # with one of many exception types (BytesLengthException, struct.error, OverflowError...).
        raise DicomDecodeError(
            f"{name}: not a readable DICOM file ({type(err).__name__}: {err})"
        ) from err


def _decode(data: bytes, name: str, max_pixels: int) -> DicomSlice:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise DicomDecodeError(f"{name}: not a readable DICOM file ({err})") from err

    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise DicomDecodeError(f"{name}: DICOM float pixel data is not supported")
    # An empty Pixel Data element reads back as None.
    if not dataset.get("PixelData"):
        raise DicomDecodeError(f"{name}: DICOM file has no pixel data (not an image object)")
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        bits_stored = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 8)
    except (AttributeError, TypeError, ValueError) as err:
        raise DicomDecodeError(f"{name}: DICOM image attributes are missing ({err})") from err
    if frames > 1:
        raise DicomDecodeError(
            f"{name}: multi-frame DICOM with {frames} frames; expected a single 2-D slice, so "
            "export each slice as its own file"
        )
    if rows * columns > max_pixels:
        raise DicomDecodeError(
            f"{name}: declared size {columns}x{rows} exceeds the limit of {max_pixels} pixels"
        )
    transfer_syntax = _check_decodable(dataset, name)

    try:
        stored = dataset.pixel_array
    except (
        AttributeError,
        TypeError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        EOFError,
    ) as err:
        raise DicomDecodeError(
            f"{name}: DICOM pixel data ({transfer_syntax}) is corrupt or truncated ({err})"
        ) from err

    if samples == 3:
        # Colour secondary captures: pydicom returns RGB, converting YBR where needed.
        if stored.ndim != 3 or stored.dtype != np.uint8:
            raise DicomDecodeError(
                f"{name}: colour DICOM pixel data of shape {stored.shape} and type {stored.dtype} "
                "is not supported; expected 8-bit RGB"
            )
        rgb = Image.fromarray(stored, mode="RGB")
        return DicomSlice(rgb, "own-range", None, transfer_syntax, bits_stored)
    if stored.ndim != 2 or samples != 1:
        raise DicomDecodeError(
            f"{name}: expected a single 2-D grey DICOM slice, got pixel data of shape "
            f"{stored.shape} with {samples} sample(s) per pixel"
        )

    try:
        values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    except (AttributeError, ValueError, TypeError, IndexError) as err:
        raise DicomDecodeError(f"{name}: invalid DICOM modality LUT or rescale ({err})") from err
    if not np.isfinite(values).all():
        raise DicomDecodeError(f"{name}: DICOM pixel values are not finite after rescaling")

    window = _window_of(dataset)
    function = str(dataset.get("VOILUTFunction") or "LINEAR").upper()
    if dataset.get("VOILUTSequence"):
        windowing, window = "voi-lut", None
        try:
            looked_up = np.asarray(apply_voi(np.rint(values).astype(np.int64), dataset), np.float64)
        except (AttributeError, ValueError, TypeError, IndexError) as err:
            raise DicomDecodeError(f"{name}: invalid DICOM VOI LUT ({err})") from err
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        grey = looked_up * (255.0 / (2**bits - 1))
    elif window is not None:
        windowing = "window"
        grey = _apply_window(values, *window, function)
    elif str(dataset.get("Modality", "")).upper() == "CT":
        windowing, window = "lung-window", LUNG_WINDOW
        grey = _apply_window(values, *LUNG_WINDOW, "LINEAR")
    else:
        windowing = "own-range"
        grey = _own_range(values)

    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255.0 - grey
    pixels = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    logger.debug("%s: DICOM %s, %s %s", name, transfer_syntax, windowing, window)
    grey_image = Image.fromarray(pixels, mode="L")
    return DicomSlice(grey_image, windowing, window, transfer_syntax, bits_stored)
