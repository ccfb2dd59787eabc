"""Batch augmentation on grey pixel tensors and the conversion to normalised model input."""

from __future__ import annotations

import pytest
import torch

from ladnn.training.images import augment_batch, to_model_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Settings that leave every image unchanged.
IDENTITY = {
    "scale": (1.0, 1.0),
    "hflip": False,
    "rotate_degrees": 0.0,
    "translate": 0.0,
    "intensity_jitter": 0.0,
}

# Named augment_batch settings, each applied to random pixels.
SETTINGS = {
    "defaults": {},
    "training profile": {"rotate_degrees": 10.0, "translate": 0.05, "intensity_jitter": 0.1},
    "strong": {
        "scale": (0.5, 1.5),
        "rotate_degrees": 45.0,
        "translate": 0.2,
        "intensity_jitter": 0.5,
    },
}


def random_pixels(count: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, size, size), dtype=torch.uint8, generator=generator)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("setting", SETTINGS)
def test_augment_keeps_shape_and_range(setting: str):
    pixels = random_pixels()

    images = augment_batch(pixels, seeded(), **SETTINGS[setting])

    assert images.shape == pixels.shape
    assert images.dtype == torch.float32
    assert images.min().item() >= 0.0
    assert images.max().item() <= 255.0


def test_augment_white_stays_within_255():
    # Bilinear interpolation in float32 can round a little above the largest input value.
    pixels = torch.full((16, 1, 32, 32), 255, dtype=torch.uint8)

    images = augment_batch(pixels, seeded(), rotate_degrees=15.0, translate=0.1)

    assert images.max().item() <= 255.0


def test_augment_identity_returns_input():
    pixels = random_pixels()

    images = augment_batch(pixels, seeded(), **IDENTITY)

    assert (images - pixels.float()).abs().max().item() < 1e-3


def test_augment_hflip_mirrors_some_images():
    pixels = random_pixels(count=16)
    settings = {**IDENTITY, "hflip": True}

    images = augment_batch(pixels, seeded(3), **settings)

    flipped = []
    for image, original in zip(images, pixels.float(), strict=True):
        unchanged = (image - original).abs().max().item() < 1e-3
        mirrored = (image - torch.flip(original, dims=[-1])).abs().max().item() < 1e-3
        assert unchanged != mirrored
        flipped.append(mirrored)
    assert any(flipped)
    assert not all(flipped)


def test_augment_same_seed_same_output():
    pixels = random_pixels()
    settings = SETTINGS["strong"]

    first = augment_batch(pixels, seeded(7), **settings)
    second = augment_batch(pixels, seeded(7), **settings)
    other = augment_batch(pixels, seeded(8), **settings)

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_zoom_enlarges_content():
    # A zoom of 2 doubles the side of a centred bright square, so its area grows four times.
    pixels = torch.zeros((1, 1, 32, 32), dtype=torch.uint8)
    pixels[..., 12:20, 12:20] = 255

    images = augment_batch(pixels, seeded(), **{**IDENTITY, "scale": (2.0, 2.0)})

    assert int((images >= 128).sum()) == 4 * int((pixels >= 128).sum())


# Grey pixel value, normalisation, and the expected value of each of the three channels.
NORMALISATION_CASES = {
    "white, half mean": (255, (0.5,) * 3, (0.5,) * 3, (1.0, 1.0, 1.0)),
    "black, half mean": (0, (0.5,) * 3, (0.5,) * 3, (-1.0, -1.0, -1.0)),
    "white, ImageNet": (
        255,
        IMAGENET_MEAN,
        IMAGENET_STD,
        tuple((1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)),
    ),
    "black, ImageNet": (
        0,
        IMAGENET_MEAN,
        IMAGENET_STD,
        tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)),
    ),
}


@pytest.mark.parametrize("case", NORMALISATION_CASES)
def test_to_model_input_normalises(case: str):
    value, mean, std, expected = NORMALISATION_CASES[case]
    pixels = torch.full((2, 1, 4, 4), value, dtype=torch.uint8)

    images = to_model_input(pixels, mean, std)

    assert images.shape == (2, 3, 4, 4)
    assert images.dtype == torch.float32
    for channel, channel_value in enumerate(expected):
        assert torch.allclose(images[:, channel], torch.tensor(channel_value), atol=1e-6)


def test_to_model_input_keeps_pixel_layout():
    pixels = random_pixels(count=2, size=8)

    images = to_model_input(pixels, (0.5,) * 3, (0.5,) * 3)

    expected = pixels.float() / 127.5 - 1.0
    for channel in range(3):
        assert torch.allclose(images[:, channel : channel + 1], expected, atol=1e-6)
