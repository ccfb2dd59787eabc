"""Normalisation of release slices and synthetic edge cases to canonical 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ladnn.data.images import ImageDecodeError, encode_png, normalise_image

# (format, mode) of every kind of file in the COVID-CT release, as PIL opens them.
RELEASE_KINDS = {
    "png-rgb": ("PNG", "RGB"),
    "png-rgba": ("PNG", "RGBA"),
    "png-grey": ("PNG", "L"),
    "jpeg-rgb": ("JPEG", "RGB"),
    "jpeg-grey": ("JPEG", "L"),
}


@pytest.fixture(scope="session")
def release_samples(release_dir: Path) -> dict[str, Path]:
    """Pick the smallest release file of each kind in RELEASE_KINDS."""
    found: dict[tuple[str, str], Path] = {}
    for folder in ("CT_COVID", "CT_NonCOVID"):
        for path in sorted((release_dir / folder).iterdir()):
            with Image.open(path) as image:
                kind = (image.format, image.mode)
            best = found.get(kind)
            if best is None or path.stat().st_size < best.stat().st_size:
                found[kind] = path
    missing = [name for name, kind in RELEASE_KINDS.items() if kind not in found]
    assert not missing, f"release has no image of kind(s) {missing}"
    return {name: found[kind] for name, kind in RELEASE_KINDS.items()}


def _png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@pytest.mark.parametrize("kind", list(RELEASE_KINDS))
def test_release_image_becomes_rgb8(release_samples, kind):
    path = release_samples[kind]
    with Image.open(path) as source:
        source_size = source.size
        source_mode = source.mode

    normalised = normalise_image(path.read_bytes(), path.name)

    assert normalised.image.mode == "RGB"
    assert np.asarray(normalised.image).dtype == np.uint8
    assert normalised.image.size == source_size
    assert (normalised.width, normalised.height) == source_size
    assert normalised.original_mode == source_mode
    assert normalised.original_format == RELEASE_KINDS[kind][0]


@pytest.mark.parametrize("kind", list(RELEASE_KINDS))
def test_release_image_id_stable(release_samples, kind):
    data = release_samples[kind].read_bytes()

    first = normalise_image(data, "first.name")
    second = normalise_image(data, "second.name")

    assert first.image_id == second.image_id
    assert len(first.image_id) == 24


@pytest.mark.parametrize("kind", list(RELEASE_KINDS))
def test_reencoded_pixels_same_id(release_samples, kind):
    """The decoded pixels saved again as PNG at another compression level keep the image id."""
    path = release_samples[kind]
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as source:
        reencoded = _png_bytes(source, compress_level=1)

    original_id = normalise_image(data, path.name).image_id

    assert reencoded != data
    assert normalise_image(reencoded, "copy.png").image_id == original_id


def test_release_kinds_differ_in_id(release_samples):
    ids = set()
    for path in release_samples.values():
        ids.add(normalise_image(path.read_bytes(), path.name).image_id)

    assert len(ids) == len(release_samples)


def test_rgba_composited_on_black():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 255, 255, 0))
    image.putpixel((1, 0), (200, 100, 50, 255))
    image.putpixel((2, 0), (200, 100, 50, 128))

    result = normalise_image(_png_bytes(image), "alpha.png").image

    assert result.mode == "RGB"
    assert result.getpixel((0, 0)) == (0, 0, 0)
    assert result.getpixel((1, 0)) == (200, 100, 50)
    half = np.array(result.getpixel((2, 0)), dtype=int)
    assert np.all(np.abs(half - np.array([100, 50, 25])) <= 1)


def test_palette_transparency_becomes_black():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    data = _png_bytes(image, transparency=1)

    normalised = normalise_image(data, "palette.png")

    assert normalised.original_mode == "P"
    assert normalised.image.mode == "RGB"
    assert normalised.image.getpixel((0, 0)) == (255, 0, 0)
    assert normalised.image.getpixel((1, 0)) == (0, 0, 0)


def test_palette_without_transparency_expanded():
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * (256 * 3 - 3))

    result = normalise_image(_png_bytes(image), "palette.png").image

    assert result.getpixel((0, 0)) == (10, 20, 30)


def test_grey16_rescaled_over_own_range():
    values = np.array([[1000, 3000, 5000]], dtype=np.uint16)
    data = _png_bytes(Image.fromarray(values))

    normalised = normalise_image(data, "grey16.png")
    grey = np.asarray(normalised.image)[0, :, 0]

    assert normalised.original_mode == "I;16"
    assert normalised.image.mode == "RGB"
    assert grey.tolist() == [0, 128, 255]


def test_grey16_gradient_not_clipped():
    """Values 1000..5000 spread over all of 0..255, while clipping would leave only 255."""
    values = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)

    normalised = normalise_image(_png_bytes(Image.fromarray(values)), "ramp.png")
    grey = np.asarray(normalised.image)[..., 0]

    assert grey.min() == 0
    assert grey.max() == 255
    assert len(np.unique(grey)) == 256


def test_grey16_constant_becomes_black():
    values = np.full((4, 4), 4000, dtype=np.uint16)

    normalised = normalise_image(_png_bytes(Image.fromarray(values)), "flat.png")
    grey = np.asarray(normalised.image)

    assert grey.max() == 0


def test_exif_orientation_applied():
    """Orientation 6 requires a 90-degree clockwise turn, which puts the left half on top."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())

    normalised = normalise_image(buffer.getvalue(), "rotated.jpg")
    red, _, blue = normalised.image.getpixel((10, 5))

    assert (normalised.width, normalised.height) == (20, 40)
    assert normalised.image.size == (20, 40)
    assert red > 200
    assert blue < 60


def test_empty_bytes_rejected():
    with pytest.raises(ImageDecodeError) as caught:
        normalise_image(b"", "slice.png")

    assert "slice.png" in str(caught.value)
    assert "empty" in str(caught.value)


def test_truncated_png_rejected(release_samples):
    path = release_samples["png-grey"]
    data = path.read_bytes()

    with pytest.raises(ImageDecodeError) as caught:
        normalise_image(data[: len(data) // 2], path.name)

    assert path.name in str(caught.value)
    assert "truncated" in str(caught.value)


def test_text_named_png_rejected():
    with pytest.raises(ImageDecodeError) as caught:
        normalise_image(b"imgname,CVD19\nslice.png,CVD19\n", "notes.png")

    assert "notes.png" in str(caught.value)
    assert "not an image file" in str(caught.value)


def test_oversized_declared_size_rejected():
    """A header declaring 9000 x 9000 pixels is rejected before any pixel data is read."""
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")

    with pytest.raises(ImageDecodeError) as caught:
        normalise_image(data, "huge.png")

    assert "huge.png" in str(caught.value)
    assert "9000x9000" in str(caught.value)


def test_encode_png_deterministic(release_samples):
    path = release_samples["png-rgba"]
    normalised = normalise_image(path.read_bytes(), path.name)

    first = encode_png(normalised.image)
    second = encode_png(normalised.image)

    assert first == second
    assert first.startswith(b"\x89PNG")


def test_encode_png_round_trip(release_samples):
    path = release_samples["jpeg-rgb"]
    normalised = normalise_image(path.read_bytes(), path.name)

    decoded = normalise_image(encode_png(normalised.image), "canonical.png")

    assert decoded.image_id == normalised.image_id
    assert decoded.original_mode == "RGB"
