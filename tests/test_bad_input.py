"""A corpus of bad and unusual input, built from real release slices, through the real entry points.

Every kind of input is either handled, with the resulting pixels or rows checked, or rejected with a
message that names the file and the problem. None crashes. Image kinds go through one
`ladnn import folder`, one `ladnn validate`, one `ladnn diagnose` (with an untrained registered
model) and the dashboard's upload functions. Metadata and archive kinds are each a batch of their
own, imported with `ladnn import folder`.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from typer.testing import CliRunner

from dashboards.uploads import Upload, decode_upload, write_contribution
from ladnn import cli
from ladnn.cli import app
from ladnn.data.images import ImageDecodeError, normalise_image
from ladnn.data.store import DatasetStore
from ladnn.workspace import Workspace

# Maximum side of the source slices in pixels, because smaller images keep the corpus fast.
MAX_SIDE = 192
# Stored DICOM values are 0-2000 with intercept -1024, i.e. -1024 to 976 HU.
HU_INTERCEPT = -1024
OWN_WINDOW = (40.0, 400.0)
LUNG_WINDOW = (-600.0, 1500.0)
CORPUS_BATCH = "corpus"


# --- real source slices ---


class Sources:
    """Distinct real release slices, one per case, so no two cases share pixels."""

    def __init__(self, release_dir: Path):
        self.paths = sorted((release_dir / "CT_COVID").glob("*.png"))
        self.used = 0
        # Release files copied unchanged, in the order the cases took them.
        self.copied: list[Path] = []

    def path(self) -> Path:
        self.used += 1
        return self.paths[self.used * 3]

    def rgb_or_grey_path(self) -> Path:
        """Return the next release PNG stored as RGB or grey (RGBA is composited, not dropped)."""
        while True:
            path = self.path()
            with Image.open(path) as image:
                if image.mode in ("RGB", "L"):
                    self.copied.append(path)
                    return path

    def grey(self) -> np.ndarray:
        with Image.open(self.path()) as image:
            grey = image.convert("L")
            grey.thumbnail((MAX_SIDE, MAX_SIDE))
            return np.asarray(grey, dtype=np.uint8)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def image_bytes(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def hu_of(grey: np.ndarray) -> np.ndarray:
    """Map grey levels 0-255 to whole Hounsfield units -1024 to 976."""
    return np.rint(grey.astype(np.float64) / 255.0 * 2000).astype(np.int32) + HU_INTERCEPT


def window_oracle(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The DICOM LINEAR VOI function (PS3.3 C.11.2.1.2.1), written case by case as the standard."""
    values = hu.astype(np.float64)
    below = values <= centre - 0.5 - (width - 1) / 2
    above = values > centre - 0.5 + (width - 1) / 2
    inside = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.select([below, above], [0.0, 255.0], inside)).astype(np.uint8)


def dicom_bytes(
    stored: np.ndarray,
    *,
    syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    slope: float | None = 1.0,
    intercept: float | None = float(HU_INTERCEPT),
    window: tuple[float, float] | None = OWN_WINDOW,
    signed: bool = False,
    bits: int = 16,
    modality: str = "CT",
    frames: int = 1,
    pixel_data: bytes | None = None,
    compress: str | None = None,
) -> bytes:
    """A CT DICOM Part 10 file with `stored` as its stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PhotometricInterpretation = photometric
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 1 if signed else 0

    if slope is not None:
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    if frames > 1:
        dataset.NumberOfFrames = frames
        stored = np.stack([stored] * frames)
    if pixel_data is None:
        dtype = {8: np.uint8, 16: np.int16 if signed else np.uint16}[bits]
        pixel_data = stored.astype(dtype).tobytes()
    dataset.PixelData = pixel_data

    if syntax != ExplicitVRLittleEndian:
        dataset["PixelData"].VR = "OB"
    if compress is not None:
        dataset.compress(compress)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- image cases ---


@dataclass
class Built:
    data: bytes
    # Expected canonical pixels (H, W) grey or (H, W, 3), and the largest mean absolute error
    # allowed against them (0 for lossless input).
    expected: np.ndarray | None = None
    tolerance: float = 0.0


@dataclass(frozen=True)
class ImageCase:
    file_name: str
    build: Callable[[Sources], Built]
    # "accepted", "duplicate", "rejected" (by the validation gate, the file decodes) or
    # "undecodable" (rejected because it does not decode).
    outcome: str
    # Regular expression the rejection reason must match.
    message: str = ""


def _png16(sources: Sources) -> Built:
    grey = sources.grey()
    values = (grey.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    low, high = float(values.min()), float(values.max())
    expected = np.rint((values - low) * 255.0 / (high - low)).astype(np.uint8)
    return Built(png_bytes(Image.fromarray(values)), expected)


def _tiff16(sources: Sources) -> Built:
    built = _png16(sources)
    with Image.open(io.BytesIO(built.data)) as image:
        return Built(image_bytes(image, "TIFF"), built.expected)


def _palette_transparency(sources: Sources) -> Built:
    rgb = Image.fromarray(sources.grey()).convert("RGB")
    palette_image = rgb.quantize(colors=64)
    indices = np.asarray(palette_image)
    transparent = int(indices[0, 0])
    palette = np.array(palette_image.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    expected = palette[indices]
    expected[indices == transparent] = 0
    return Built(png_bytes(palette_image, transparency=transparent), expected)


def _grey_alpha(sources: Sources) -> Built:
    grey = sources.grey()
    alpha = np.full_like(grey, 128)
    alpha[: grey.shape[0] // 2] = 255
    image = Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA")
    expected = np.rint(grey.astype(np.float64) * alpha / 255.0).astype(np.uint8)
    return Built(png_bytes(image), expected, tolerance=0.6)


def _cmyk_jpeg(sources: Sources) -> Built:
    grey = sources.grey()
    cmyk = Image.fromarray(grey).convert("RGB").convert("CMYK")
    return Built(image_bytes(cmyk, "JPEG", quality=95), grey, tolerance=3.0)


def _progressive_jpeg(sources: Sources) -> Built:
    grey = sources.grey()
    data = image_bytes(Image.fromarray(grey), "JPEG", quality=95, progressive=True)
    return Built(data, grey, tolerance=2.0)


def _exif_rotated_jpeg(sources: Sources) -> Built:
    """Orientation 6: a viewer turns the stored pixels 90 degrees clockwise."""
    grey = sources.grey()
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(Image.fromarray(grey), "JPEG", quality=95, exif=exif.tobytes())
    return Built(data, np.rot90(grey, k=-1), tolerance=2.0)


def _gif_named_png(sources: Sources) -> Built:
    grey = sources.grey()
    return Built(image_bytes(Image.fromarray(grey), "GIF"), grey)


def _bmp(sources: Sources) -> Built:
    grey = sources.grey()
    return Built(image_bytes(Image.fromarray(grey).convert("RGB"), "BMP"), grey)


def _real_release_file(sources: Sources) -> Built:
    path = sources.rgb_or_grey_path()
    with Image.open(path) as image:
        return Built(path.read_bytes(), np.asarray(image.convert("RGB")))


def _dicom_own_window(sources: Sources) -> Built:
    hu = hu_of(sources.grey())
    return Built(dicom_bytes(hu - HU_INTERCEPT), window_oracle(hu, *OWN_WINDOW))


def _dicom_lung_fallback(sources: Sources) -> Built:
    hu = hu_of(sources.grey())
    return Built(dicom_bytes(hu - HU_INTERCEPT, window=None), window_oracle(hu, *LUNG_WINDOW))


def _dicom_monochrome1(sources: Sources) -> Built:
    hu = hu_of(sources.grey())
    data = dicom_bytes(hu - HU_INTERCEPT, photometric="MONOCHROME1")
    return Built(data, 255 - window_oracle(hu, *OWN_WINDOW))


def _dicom_rescale(sources: Sources) -> Built:
    """Slope 2 and intercept -2048: stored values are half of (HU + 2048)."""
    hu = hu_of(sources.grey()) // 2 * 2
    stored = (hu + 2048) // 2
    data = dicom_bytes(stored, slope=2.0, intercept=-2048.0)
    return Built(data, window_oracle(hu, *OWN_WINDOW))


def _dicom_signed(sources: Sources) -> Built:
    hu = hu_of(sources.grey())
    data = dicom_bytes(hu, signed=True, slope=None, window=LUNG_WINDOW)
    return Built(data, window_oracle(hu, *LUNG_WINDOW))


def _dicom_rle(sources: Sources) -> Built:
    hu = hu_of(sources.grey())
    data = dicom_bytes(hu - HU_INTERCEPT, compress=RLELossless)
    return Built(data, window_oracle(hu, *OWN_WINDOW))


def _dicom_jpeg_baseline(sources: Sources) -> Built:
    """An 8-bit JPEG-compressed secondary capture without a window: shown over its own range."""
    grey = sources.grey()
    jpeg = image_bytes(Image.fromarray(grey), "JPEG", quality=95)
    data = dicom_bytes(
        grey,
        syntax=JPEGBaseline8Bit,
        bits=8,
        slope=None,
        window=None,
        modality="OT",
        pixel_data=encapsulate([jpeg]),
    )
    low, high = float(grey.min()), float(grey.max())
    expected = np.rint((grey - low) * 255.0 / (high - low)).astype(np.uint8)
    return Built(data, expected, tolerance=2.5)


def _dicom_jpeg_ls(sources: Sources) -> Built:
    grey = sources.grey()
    fake_stream = b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"
    data = dicom_bytes(grey, syntax=JPEGLSLossless, pixel_data=encapsulate([fake_stream]))
    return Built(data)


def _dicom_multiframe(sources: Sources) -> Built:
    return Built(dicom_bytes(hu_of(sources.grey()) - HU_INTERCEPT, frames=3))


def _dicom_truncated_pixels(sources: Sources) -> Built:
    stored = (hu_of(sources.grey()) - HU_INTERCEPT).astype(np.uint16)
    return Built(dicom_bytes(stored, pixel_data=stored.tobytes()[: stored.nbytes // 3]))


def _dicom_without_pixels(sources: Sources) -> Built:
    data = dicom_bytes(sources.grey(), pixel_data=b"")
    return Built(data)


def _zero_bytes(_: Sources) -> Built:
    return Built(b"")


def _truncated_png(sources: Sources) -> Built:
    data = sources.path().read_bytes()
    return Built(data[: len(data) // 2])


def _truncated_jpeg(sources: Sources) -> Built:
    data = image_bytes(Image.fromarray(sources.grey()), "JPEG", quality=90)
    return Built(data[: len(data) // 2])


def _text_named_png(_: Sources) -> Built:
    return Built(b"imgname,CVD19\nslice.png,CVD19\n")


def _html_named_jpg(_: Sources) -> Built:
    return Built(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")


def _eps_named_png(_: Sources) -> Built:
    """PostScript, which Pillow would hand to Ghostscript if its EPS plugin were enabled."""
    return Built(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto showpage\n")


def _text_named_dcm(_: Sources) -> Built:
    return Built(b"patient: anonymous\nslice: 17\n")


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _bomb_png(_: Sources) -> Built:
    return Built(_png_header(100_000, 100_000))


def _bomb_jpeg(sources: Sources) -> Built:
    """A real JPEG whose frame header declares 60000 x 60000 pixels."""
    data = bytearray(image_bytes(Image.fromarray(sources.grey()), "JPEG", quality=90))
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 60000, 60000)
    return Built(bytes(data))


def _text_chunk_bomb(sources: Sources) -> Built:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (64 * 1024 * 1024), zip=True)
    return Built(png_bytes(Image.fromarray(sources.grey()), pnginfo=info))


def _nan_float_tiff(sources: Sources) -> Built:
    values = sources.grey().astype(np.float32)
    values[0, 0] = np.nan
    return Built(image_bytes(Image.fromarray(values, mode="F"), "TIFF"))


def _blank_png(sources: Sources) -> Built:
    grey = sources.grey()
    return Built(png_bytes(Image.fromarray(np.full_like(grey, int(grey.mean())))))


def _tiny_png(sources: Sources) -> Built:
    return Built(png_bytes(Image.fromarray(sources.grey()[:10, :10])))


def _markup_name(sources: Sources) -> Built:
    grey = sources.grey()
    return Built(png_bytes(Image.fromarray(grey)), grey)


def _copy_of_first_release_file(sources: Sources) -> Built:
    path = sources.copied[0]
    with Image.open(path) as image:
        return Built(path.read_bytes(), np.asarray(image.convert("RGB")))


DECODE_FAILURE = "corrupt or truncated"
IMAGE_CASES = [
    ImageCase("png-16bit.png", _png16, "accepted"),
    ImageCase("tiff-16bit.tif", _tiff16, "accepted"),
    ImageCase("png-palette-transparency.png", _palette_transparency, "accepted"),
    ImageCase("png-grey-alpha.png", _grey_alpha, "accepted"),
    ImageCase("jpeg-cmyk.jpg", _cmyk_jpeg, "accepted"),
    ImageCase("jpeg-progressive.jpg", _progressive_jpeg, "accepted"),
    ImageCase("jpeg-exif-rotated.jpg", _exif_rotated_jpeg, "accepted"),
    ImageCase("gif-named.png", _gif_named_png, "accepted"),
    ImageCase("bitmap.bmp", _bmp, "accepted"),
    ImageCase("markup [red]x[bold] name.png", _markup_name, "accepted"),
    ImageCase("dicom-own-window.dcm", _dicom_own_window, "accepted"),
    ImageCase("dicom-lung-fallback.dcm", _dicom_lung_fallback, "accepted"),
    ImageCase("dicom-monochrome1.dcm", _dicom_monochrome1, "accepted"),
    ImageCase("dicom-rescale.dcm", _dicom_rescale, "accepted"),
    ImageCase("dicom-signed.dcm", _dicom_signed, "accepted"),
    ImageCase("dicom-rle.dcm", _dicom_rle, "accepted"),
    ImageCase("dicom-jpeg-baseline.dcm", _dicom_jpeg_baseline, "accepted"),
    ImageCase("release-a.png", _real_release_file, "accepted"),
    ImageCase("release-b.png", _real_release_file, "accepted"),
    ImageCase("release-c.png", _real_release_file, "accepted"),
    ImageCase("release-d.png", _real_release_file, "accepted"),
    ImageCase("release-z-copy-of-a.png", _copy_of_first_release_file, "duplicate"),
    ImageCase("dicom-jpeg-ls.dcm", _dicom_jpeg_ls, "undecodable", r"JPEG-LS.*cannot be decoded"),
    ImageCase("dicom-multiframe.dcm", _dicom_multiframe, "undecodable", r"multi-frame.*3 frames"),
    ImageCase("dicom-truncated.dcm", _dicom_truncated_pixels, "undecodable", DECODE_FAILURE),
    ImageCase("dicom-no-pixels.dcm", _dicom_without_pixels, "undecodable", "no pixel data"),
    ImageCase("text-named.dcm", _text_named_dcm, "undecodable", "not a DICOM Part 10 file"),
    ImageCase("zero-bytes.png", _zero_bytes, "undecodable", r"empty \(0 bytes\)"),
    ImageCase("truncated.png", _truncated_png, "undecodable", DECODE_FAILURE),
    ImageCase("truncated.jpg", _truncated_jpeg, "undecodable", DECODE_FAILURE),
    ImageCase("csv-text.png", _text_named_png, "undecodable", "not an image file"),
    ImageCase("error-page.jpg", _html_named_jpg, "undecodable", "not an image file"),
    ImageCase("postscript.png", _eps_named_png, "undecodable", "not an image file"),
    ImageCase("bomb-declared.png", _bomb_png, "undecodable", r"decompression bomb.*10000000000"),
    ImageCase("bomb-declared.jpg", _bomb_jpeg, "undecodable", "decompression bomb"),
    ImageCase("text-chunk-bomb.png", _text_chunk_bomb, "undecodable", "too large"),
    ImageCase("float-nan.tif", _nan_float_tiff, "undecodable", "NaN or infinite"),
    ImageCase("blank.png", _blank_png, "rejected", "not_blank"),
    ImageCase("tiny.png", _tiny_png, "rejected", "width_in_range"),
]
CASES_BY_NAME = {case.file_name: case for case in IMAGE_CASES}
DECODES = {"accepted", "duplicate", "rejected"}


def flat(text: str) -> str:
    """Join the lines of an output, collapsing whitespace, so a wrapped log line reads as one."""
    return " ".join(text.split())


def contains(output: str, *parts: str) -> bool:
    return all(flat(part) in flat(output) for part in parts)


def found(output: str, prefix: str, message: str) -> bool:
    """Check that `prefix` (literal) is followed on the same output by `message` (a pattern)."""
    pattern = re.escape(flat(prefix)) + r".*?" + message
    return re.search(pattern, flat(output), flags=re.IGNORECASE) is not None


def grey_or_rgb(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else np.stack([array] * 3, axis=-1)


def mean_error(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == grey_or_rgb(expected).shape, (actual.shape, expected.shape)
    return float(np.abs(actual.astype(np.int32) - grey_or_rgb(expected)).mean())


# --- the image corpus through the CLI ---


@dataclass
class CliSpace:
    root: Path
    workspace: Workspace
    options: list[str]
    runner: CliRunner = field(default_factory=CliRunner)

    def invoke(self, *args: str):
        return self.runner.invoke(app, [*self.options, *args])


@pytest.fixture(scope="module")
def saved_environment():
    """`ladnn` sets variables such as LADNN_WORKSPACE; put the environment back afterwards.

    The CLI's console is widened meanwhile, so no message is wrapped inside a file name.
    """
    saved = dict(os.environ)
    width = cli.console.width
    cli.console.width = 10_000
    yield
    cli.console.width = width
    os.environ.clear()
    os.environ.update(saved)


def make_space(base: Path) -> CliSpace:
    root = base / "root"
    root.mkdir(parents=True)
    workspace = Workspace.resolve(base / "workspace").ensure()
    options = ["--workspace", str(workspace.root), "--set", f"data.root={root}"]
    return CliSpace(root, workspace, options)


@dataclass
class Corpus:
    folder: Path
    built: dict[str, Built]
    space: CliSpace
    import_output: str
    validate_output: str
    diagnose_output: str
    metadata: pd.DataFrame


def register_untrained_model(space: CliSpace, image: bytes) -> None:
    """Log an untrained 64-pixel LA-DNN and register it, so `ladnn diagnose` has a model."""
    import mlflow
    import torch

    from ladnn.config import load_config
    from ladnn.models.backbones import BACKBONES
    from ladnn.models.ladnn import build_model
    from ladnn.tracking.pyfunc import log_pyfunc_model
    from ladnn.tracking.registry import register_candidate
    from ladnn.tracking.store import configure_mlflow

    cfg = load_config(overrides=[f"data.root={space.root}"])
    configure_mlflow(cfg, space.workspace)
    torch.manual_seed(0)
    model, _ = build_model("resnet18", pretrained=False)
    spec = {
        "backbone": "resnet18",
        "variant": "ladnn",
        "image_size": 64,
        "mean": list(BACKBONES["resnet18"].mean),
        "std": list(BACKBONES["resnet18"].std),
        "threshold": 0.5,
        "tta": False,
    }
    with mlflow.start_run(run_name="untrained"):
        info = log_pyfunc_model(
            model, spec, space.workspace.root / "model_files", pd.DataFrame({"image": [image]})
        )
    register_candidate(info.model_uri, cfg.tracking.registered_model, {"backbone": "resnet18"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, release_dir: Path, saved_environment) -> Corpus:
    """Write every image case into one folder, then import, validate and diagnose it."""
    base = tmp_path_factory.mktemp("bad-input")
    folder = base / CORPUS_BATCH
    folder.mkdir()
    sources = Sources(release_dir)
    built = {}
    for case in IMAGE_CASES:
        built[case.file_name] = case.build(sources)
        (folder / case.file_name).write_bytes(built[case.file_name].data)

    space = make_space(base)
    validated = space.invoke("validate", str(folder), "--label", "covid")
    imported = space.invoke("import", "folder", str(folder), "--label", "covid")
    assert imported.exit_code == 0, imported.output
    register_untrained_model(space, built["release-a.png"].data)
    paths = [str(folder / case.file_name) for case in IMAGE_CASES]
    diagnosed = space.invoke("diagnose", *paths)
    return Corpus(
        folder=folder,
        built=built,
        space=space,
        import_output=imported.output,
        validate_output=validated.output,
        diagnose_output=diagnosed.output,
        metadata=DatasetStore(space.root).read_metadata(),
    )


def test_corpus_covers_image_kinds():
    outcomes = {case.outcome for case in IMAGE_CASES}
    assert outcomes == {"accepted", "duplicate", "rejected", "undecodable"}
    assert len(IMAGE_CASES) >= 30


@pytest.mark.parametrize("name", list(CASES_BY_NAME))
def test_import_outcome(corpus: Corpus, name: str):
    case = CASES_BY_NAME[name]
    file_name = f"{CORPUS_BATCH}/{name}"
    rows = corpus.metadata[corpus.metadata["file_name"] == file_name]

    if case.outcome == "accepted":
        assert len(rows) == 1, corpus.import_output
        image_id = rows["image_id"].iloc[0]
        path = DatasetStore(corpus.space.root).image_path(image_id)
        with Image.open(path) as stored:
            pixels = np.asarray(stored.convert("RGB"))
        built = corpus.built[name]
        assert mean_error(pixels, built.expected) <= built.tolerance
        assert not contains(corpus.import_output, f"rejected: {file_name}:")
    elif case.outcome == "duplicate":
        assert rows.empty
        assert contains(corpus.import_output, f"duplicate: {file_name} has the same pixels as")
    else:
        assert rows.empty
        lines = [line for line in corpus.import_output.splitlines() if "rejected:" in line]
        assert found(corpus.import_output, f"rejected: {file_name}:", case.message), lines


@pytest.mark.parametrize("name", list(CASES_BY_NAME))
def test_validate_outcome(corpus: Corpus, name: str):
    case = CASES_BY_NAME[name]
    file_name = f"{CORPUS_BATCH}/{name}"
    rejected_line = f"rejected: {file_name}:"

    if case.outcome in ("accepted", "duplicate"):
        assert not contains(corpus.validate_output, rejected_line)
    else:
        assert found(corpus.validate_output, rejected_line, case.message), corpus.validate_output


def test_validate_counts(corpus: Corpus):
    rejected = sum(case.outcome in ("rejected", "undecodable") for case in IMAGE_CASES)
    accepted = sum(case.outcome == "accepted" for case in IMAGE_CASES)
    duplicates = sum(case.outcome == "duplicate" for case in IMAGE_CASES)

    # Duplicates of earlier files in the batch are counted apart from the validated rows.
    assert contains(corpus.validate_output, f"{len(IMAGE_CASES) - duplicates} row(s) validated")
    assert contains(corpus.validate_output, f"{rejected} rejected, {accepted} accepted")
    assert contains(corpus.validate_output, f"{duplicates} duplicate(s)")


@pytest.mark.parametrize("name", list(CASES_BY_NAME))
def test_diagnose_outcome(corpus: Corpus, name: str):
    case = CASES_BY_NAME[name]
    path = str(corpus.folder / name)

    if case.outcome in DECODES:
        assert contains(corpus.diagnose_output, f"{path}: COVID-19 probability")
        assert not contains(corpus.diagnose_output, f"error: {path}")
    else:
        assert found(corpus.diagnose_output, f"error: {path}:", case.message), (
            corpus.diagnose_output
        )


def test_diagnose_counts_failures(corpus: Corpus):
    failed = sum(case.outcome not in DECODES for case in IMAGE_CASES)

    assert contains(corpus.diagnose_output, f"{failed} of {len(IMAGE_CASES)} image(s) failed")


def test_rejected_files_quarantined(corpus: Corpus):
    quarantined = list((corpus.space.workspace.quarantine_dir).rglob("*.reason.json"))
    expected = sum(case.outcome in ("rejected", "undecodable") for case in IMAGE_CASES)

    assert len(quarantined) == expected


@pytest.mark.parametrize("name", list(CASES_BY_NAME))
def test_dashboard_upload_outcome(corpus: Corpus, name: str):
    case = CASES_BY_NAME[name]
    upload = Upload(name, corpus.built[name].data)

    if case.outcome in DECODES:
        normalised, data = decode_upload(upload)
        imported = corpus.metadata[corpus.metadata["file_name"] == f"{CORPUS_BATCH}/{name}"]
        if not imported.empty:
            assert normalised.image_id == imported["image_id"].iloc[0]
        # The bytes the dashboard stores decode to the same pixels.
        assert normalise_image(data, "stored.png").image_id == normalised.image_id
    else:
        with pytest.raises(ImageDecodeError) as caught:
            decode_upload(upload)
        assert str(caught.value).startswith(f"{name}: ")
        assert re.search(case.message, str(caught.value), flags=re.IGNORECASE)


def test_dashboard_contribution_hash_names(corpus: Corpus, tmp_path: Path):
    uploads = [
        Upload(case.file_name, corpus.built[case.file_name].data)
        for case in IMAGE_CASES
        if case.outcome in DECODES
    ]

    folder = write_contribution(
        tmp_path / "inbox", uploads, label="covid", contributor="rita", source="upload"
    )
    stored = sorted(path.name for path in folder.iterdir() if path.name != "metadata.csv")

    assert all(re.fullmatch(r"[0-9a-f]{16}\.(png|jpg)", name) for name in stored), stored
    for path in folder.iterdir():
        if path.name != "metadata.csv":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            assert path.name.startswith(digest)
    # The two copies of the first release file are one stored file.
    assert len(stored) == len(uploads) - 1
    metadata = (folder / "metadata.csv").read_text()
    assert "markup" not in metadata
    assert "dicom" not in metadata


# --- metadata CSV and archive cases, one batch each ---


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    return text.encode(encoding)


@dataclass(frozen=True)
class BatchCase:
    name: str
    # Writes the batch under the folder it is given and returns the path to import.
    build: Callable[[Path, list[Path]], Path]
    # Expected rows by file name (None: the import fails), or the error's expected text.
    expected_rows: dict[str, dict[str, object]] | None
    message: str = ""
    label_option: str | None = None


def _folder_with_csv(text: str, encoding: str = "utf-8", images: int = 2):
    def build(base: Path, sources: list[Path]) -> Path:
        folder = base / "ward"
        folder.mkdir()
        for index, path in enumerate(sources[:images]):
            (folder / f"slice-{index}.png").write_bytes(path.read_bytes())
        (folder / "metadata.csv").write_bytes(_encode(text, encoding))
        return folder

    return build


GBK_CAPTION = "图1 双肺磨玻璃影"
LATIN_SOURCE = "Hôpital de Genève, Département de radiologie"
BASIC_CSV = (
    'file_name,label,source\nslice-0.png,covid,"{source}"\nslice-1.png,negative,"{source}"\n'
)


def _zip_with(members: dict[str, bytes], damage: str | None = None):
    def build(base: Path, sources: list[Path]) -> Path:
        archive = base / "batch.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
            for index, path in enumerate(sources[:2]):
                opened.writestr(f"images/slice-{index}.png", path.read_bytes())
            for name, data in members.items():
                opened.writestr(name, data)
        if damage is not None:
            _damage_member(archive, damage, sources[2].read_bytes())
        return archive

    return build


def _damage_member(archive: Path, member: str, image: bytes) -> None:
    """Add `member` holding `image`, then flip bytes in its compressed data (CRC and zlib fail)."""
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as opened:
        opened.writestr(member, image)
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(member)
    data = bytearray(archive.read_bytes())
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_length + extra_length
    for offset in range(start + 10, start + info.compress_size - 10, 7):
        data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))


def _zip_declaring_huge_member(base: Path, sources: list[Path]) -> Path:
    """A zip whose central directory declares a member of 4 GiB - 1 bytes uncompressed."""
    archive = _zip_with({})(base, sources)
    data = bytearray(archive.read_bytes())
    directory = data.find(b"PK\x01\x02")
    data[directory + 24 : directory + 28] = struct.pack("<I", 0xFFFFFFFF)
    archive.write_bytes(bytes(data))
    return archive


def _nested_zip_bytes(sources: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as opened:
        opened.writestr("inner.png", sources[3].read_bytes())
    return buffer.getvalue()


def _corrupt_zip(base: Path, sources: list[Path]) -> Path:
    archive = _zip_with({})(base, sources)
    archive.write_bytes(archive.read_bytes()[:100])
    return archive


def _two_csvs(base: Path, sources: list[Path]) -> Path:
    folder = _folder_with_csv(BASIC_CSV.format(source="a"))(base, sources)
    (folder / "second.csv").write_text(BASIC_CSV.format(source="b"))
    return folder


def _nested_archive(base: Path, sources: list[Path]) -> Path:
    return _zip_with({"more/inner.zip": _nested_zip_bytes(sources)})(base, sources)


BATCH_CASES = [
    BatchCase(
        "csv-gbk",
        _folder_with_csv(
            f"file_name,label,caption\nslice-0.png,covid,{GBK_CAPTION}\nslice-1.png,covid,无\n",
            "gbk",
        ),
        {"slice-0.png": {"label": 1, "caption": GBK_CAPTION}, "slice-1.png": {"caption": "无"}},
    ),
    BatchCase(
        "csv-utf16-bom",
        _folder_with_csv(BASIC_CSV.format(source=LATIN_SOURCE), "utf-16-bom"),
        {"slice-0.png": {"label": 1, "source": LATIN_SOURCE}, "slice-1.png": {"label": 0}},
    ),
    BatchCase(
        "csv-latin1",
        _folder_with_csv(BASIC_CSV.format(source=LATIN_SOURCE), "latin-1"),
        {"slice-0.png": {"label": 1, "source": LATIN_SOURCE}, "slice-1.png": {"label": 0}},
    ),
    BatchCase(
        "csv-extra-columns",
        _folder_with_csv(
            "file_name,label,scanner,GGO,consolidation(Csld)\n"
            "slice-0.png,covid,Siemens,1,0\nslice-1.png,covid,GE,,1\n"
        ),
        None,
        r"metadata\.csv: unknown column\(s\) \['scanner'\]",
    ),
    BatchCase(
        "csv-duplicated-rows",
        _folder_with_csv(
            "file_name,label\nslice-0.png,covid\nslice-0.png,covid\nslice-1.png,negative\n"
        ),
        {"slice-0.png": {"label": 1}, "slice-1.png": {"label": 0}},
    ),
    BatchCase(
        "csv-row-without-image",
        _folder_with_csv("file_name,label\nslice-0.png,covid\nmissing.png,covid\n", images=1),
        {"slice-0.png": {"label": 1}},
    ),
    BatchCase(
        "csv-missing-label-column-with-option",
        _folder_with_csv("file_name,source\nslice-0.png,ward b\nslice-1.png,ward b\n"),
        {"slice-0.png": {"label": 0, "source": "ward b"}, "slice-1.png": {"label": 0}},
        label_option="negative",
    ),
    BatchCase(
        "csv-conflicting-labels",
        _folder_with_csv(
            "file_name,label\nslice-0.png,covid\nslice-0.png,negative\nslice-1.png,covid\n"
        ),
        None,
        r"metadata\.csv: conflicting rows for \['slice-0\.png'\]",
    ),
    BatchCase(
        "csv-missing-file-name-column",
        _folder_with_csv("image,label\nslice-0.png,covid\n"),
        None,
        r"metadata\.csv: missing required column 'file_name'",
    ),
    BatchCase(
        "csv-missing-label-column",
        _folder_with_csv("file_name,source\nslice-0.png,ward b\nslice-1.png,ward b\n"),
        None,
        r"2 image\(s\) have no label in the metadata and no batch label",
    ),
    BatchCase(
        "csv-invalid-label",
        _folder_with_csv("file_name,label\nslice-0.png,maybe\nslice-1.png,covid\n"),
        {"slice-1.png": {"label": 1}},
        r"rejected: ward/slice-0\.png: .*invalid label 'maybe'",
    ),
    BatchCase(
        "csv-invalid-lesion-value",
        _folder_with_csv("file_name,label,GGO\nslice-0.png,covid,2\nslice-1.png,covid,1\n"),
        {"slice-1.png": {"GGO": 1}},
        r"rejected: ward/slice-0\.png: .*invalid value '2' of lesion GGO",
    ),
    BatchCase(
        "csv-invalid-date",
        _folder_with_csv(
            "file_name,label,collected_on\nslice-0.png,covid,31.02\nslice-1.png,covid,5.14\n"
        ),
        {"slice-1.png": {"collected_on": "2020-05-14"}},
        r"rejected: ward/slice-0\.png: .*collected_on '31\.02' is not a date",
    ),
    BatchCase(
        "csv-semicolons",
        _folder_with_csv("file_name;label\nslice-0.png;covid\n"),
        None,
        r"metadata\.csv: missing required column 'file_name'; columns are \['file_name;label'\]",
    ),
    BatchCase(
        "csv-row-with-extra-field",
        _folder_with_csv(f"file_name,label,source\nslice-0.png,covid,{LATIN_SOURCE}\n"),
        None,
        r"metadata\.csv: a row has more fields than the header",
    ),
    BatchCase("csv-empty", _folder_with_csv(""), None, r"metadata\.csv: not a readable CSV"),
    BatchCase(
        "csv-truncated-utf16",
        lambda base, sources: _truncated_utf16(base, sources),
        None,
        r"metadata\.csv: text is not valid utf-16",
    ),
    BatchCase("csv-two-files", _two_csvs, None, r"found 2 CSV files"),
    BatchCase(
        "zip-path-escapes-folder",
        _zip_with({"../../outside.png": b"x"}),
        None,
        r"batch\.zip: member '\.\./\.\./outside\.png' has a path outside the archive root",
    ),
    BatchCase(
        "zip-absolute-path",
        _zip_with({"/etc/cron.d/slice.png": b"x"}),
        None,
        r"batch\.zip: member '/etc/cron\.d/slice\.png' has a path outside the archive root",
    ),
    BatchCase(
        "zip-nested-archive",
        _nested_archive,
        None,
        r"batch\.zip: nested archive 'more/inner\.zip' is not supported",
    ),
    BatchCase(
        "zip-huge-member",
        _zip_declaring_huge_member,
        None,
        r"batch\.zip: member 'images/slice-0\.png' declares 4294967295 bytes uncompressed",
    ),
    BatchCase("zip-corrupt", _corrupt_zip, None, r"batch\.zip: not a readable zip archive"),
    BatchCase(
        "zip-damaged-member",
        _zip_with({}, damage="images/damaged.png"),
        {"images/slice-0.png": {"label": 1}, "images/slice-1.png": {"label": 1}},
        r"rejected: batch\.zip/images/damaged\.png: .*cannot read file",
        label_option="covid",
    ),
    BatchCase(
        "zip-with-macos-metadata",
        _zip_with({"__MACOSX/images/._slice-0.png": b"\x00\x05\x16\x07", ".DS_Store": b"\0"}),
        {"images/slice-0.png": {"label": 1}, "images/slice-1.png": {"label": 1}},
        label_option="covid",
    ),
]


def _truncated_utf16(base: Path, sources: list[Path]) -> Path:
    folder = _folder_with_csv(BASIC_CSV.format(source="a"), "utf-16-bom")(base, sources)
    path = folder / "metadata.csv"
    path.write_bytes(path.read_bytes()[:-1])
    return folder


@pytest.fixture(scope="module")
def batch_space(tmp_path_factory, saved_environment) -> CliSpace:
    return make_space(tmp_path_factory.mktemp("bad-batches"))


@pytest.fixture(scope="module")
def batch_sources(release_dir: Path) -> list[Path]:
    """Real slices for the batches, none of them used by another batch case's rows."""
    return sorted((release_dir / "CT_NonCOVID").glob("*.png"))


def test_corpus_covers_batch_kinds():
    assert len(BATCH_CASES) + len(IMAGE_CASES) >= 60
    assert any(case.expected_rows is None for case in BATCH_CASES)


@pytest.mark.parametrize("case", BATCH_CASES, ids=[case.name for case in BATCH_CASES])
def test_batch_outcome(batch_space: CliSpace, batch_sources, tmp_path: Path, case: BatchCase):
    index = BATCH_CASES.index(case)
    sources = batch_sources[index * 4 : index * 4 + 4]
    path = case.build(tmp_path, sources)
    batch_id = f"case-{index}"
    options = ["--batch-id", batch_id]
    if case.label_option:
        options += ["--label", case.label_option]

    result = batch_space.invoke("import", "folder", str(path), *options)

    if case.expected_rows is None:
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert re.search(case.message, flat(result.output)), result.output
        assert path.name in result.output
        return
    assert result.exit_code == 0, result.output
    if case.message:
        assert re.search(case.message, flat(result.output)), result.output
    metadata = DatasetStore(batch_space.root).read_metadata()
    rows = metadata[metadata["batch_id"] == batch_id].set_index("file_name")
    prefix = path.name
    assert sorted(rows.index) == sorted(f"{prefix}/{name}" for name in case.expected_rows)
    for name, expected in case.expected_rows.items():
        row = rows.loc[f"{prefix}/{name}"]
        for column, value in expected.items():
            if value is pd.NA:
                assert pd.isna(row[column]), (name, column, row[column])
            else:
                assert row[column] == value, (name, column, row[column])


def test_upload_missing_file_named(batch_space: CliSpace, tmp_path: Path):
    missing = tmp_path / "not-there.png"

    result = batch_space.invoke("import", "upload", str(missing), "--label", "covid")

    assert result.exit_code == 1
    assert contains(result.output, f"upload not found: {missing}")
