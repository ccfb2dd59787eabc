"""Decoded, resized images cached once as a uint8 tensor, and batch augmentation on tensors.

Decoding and resizing every image every epoch, as the LA-DNN reference code does, costs more than
the forward pass of a small backbone on a CPU; here each image is decoded once per size into a
cache file in the workspace, and augmentation runs on whole batches of tensors.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ladnn.data.store import DatasetStore, atomic_write_bytes

__all__ = ["load_image_tensor", "ImageCache", "augment_batch", "to_model_input"]

logger = logging.getLogger(__name__)


def load_image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Convert an image to a grey uint8 tensor of shape (1, size, size)."""
    grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(grey, dtype=np.uint8)).unsqueeze(0)


class ImageCache:
    """Grey uint8 pixels of dataset images at one size, stored in `cache_dir/images-<size>.pt`.

    Only images missing from the cache are decoded, so a new batch costs its own size.
    """

    def __init__(self, store: DatasetStore, cache_dir: Path, size: int):
        self.store = store
        self.size = size
        self.path = Path(cache_dir) / f"images-{size}.pt"
        self._index: dict[str, int] = {}
        self._pixels = torch.empty((0, 1, size, size), dtype=torch.uint8)
        if self.path.is_file():
            try:
                saved = torch.load(self.path, map_location="cpu", weights_only=True)
                self._pixels = saved["pixels"]
                self._index = {image_id: i for i, image_id in enumerate(saved["ids"])}
            except (RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError) as err:
                logger.warning("ignoring unreadable image cache %s: %s", self.path, err)

    def get(self, image_ids: list[str]) -> torch.Tensor:
        missing = [image_id for image_id in dict.fromkeys(image_ids) if image_id not in self._index]
        if missing:
            self._add(missing)
        positions = torch.tensor(
            [self._index[image_id] for image_id in image_ids], dtype=torch.long
        )
        return self._pixels[positions]

    def _add(self, image_ids: list[str]) -> None:
        tensors = []
        for image_id in image_ids:
            path = self.store.image_path(image_id)
            with Image.open(path) as image:
                tensors.append(load_image_tensor(image, self.size))
        start = len(self._index)
        self._pixels = torch.cat([self._pixels, torch.stack(tensors)])
        self._index.update({image_id: start + i for i, image_id in enumerate(image_ids)})
        ids = sorted(self._index, key=self._index.__getitem__)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"ids": ids, "pixels": self._pixels}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        logger.info(
            "cached %d decoded image(s) at %dpx in %s", len(image_ids), self.size, self.path
        )


def to_model_input(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Scale grey uint8 pixels (N, 1, H, W) to the backbone's normalised 3-channel float input."""
    images = (pixels.float() / 255.0).expand(-1, 3, -1, -1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def augment_batch(
    pixels: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.8, 1.2),
    hflip: bool = True,
    rotate_degrees: float = 0.0,
    translate: float = 0.0,
    intensity_jitter: float = 0.0,
) -> torch.Tensor:
    """Apply a random affine map (scale, rotation, translation), flip and intensity jitter per image.

    Takes and returns grey pixels in [0, 255] as float of shape (N, 1, H, W).
    """
    n = pixels.shape[0]
    images = pixels.float()

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    zoom = uniform(*scale)
    angle = uniform(-rotate_degrees, rotate_degrees) * (math.pi / 180.0)
    shift_x = uniform(-translate, translate) * 2
    shift_y = uniform(-translate, translate) * 2
    flip = (
        torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    )

    # The sampling grid maps output to input coordinates, so a zoom of s divides by s.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift_x], dim=1),
            torch.stack([sin * flip, cos, shift_y], dim=1),
        ],
        dim=1,
    ).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images.clamp_(0, 255)

    if intensity_jitter:
        contrast = (
            uniform(1 - intensity_jitter, 1 + intensity_jitter).view(n, 1, 1, 1).to(images.device)
        )
        brightness = (
            (uniform(-intensity_jitter, intensity_jitter) * 255).view(n, 1, 1, 1).to(images.device)
        )
        images = (images * contrast + brightness).clamp_(0, 255)
    return images
