"""Small training and validation splits of real release images, decoded in memory for tests that
call `train_model` directly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from ladnn.data.lesions import LESIONS
from ladnn.training.images import load_image_tensor
from ladnn.training.trainer import SplitData


def split_of(paths: list[Path], labels: list[int], image_size: int) -> SplitData:
    """Decode `paths` at `image_size` into a split whose lesions are all unknown."""
    pixels = []
    for path in paths:
        with Image.open(path) as image:
            pixels.append(load_image_tensor(image, image_size))
    return SplitData(
        frame=pd.DataFrame({"image_id": [path.stem for path in paths], "label": labels}),
        pixels=torch.stack(pixels),
        covid=torch.tensor(labels, dtype=torch.float32),
        lesions=torch.full((len(paths), len(LESIONS)), float("nan")),
    )


def small_splits(
    release_dir: Path, train_per_label: int, val_per_label: int, image_size: int
) -> tuple[SplitData, SplitData]:
    """Take the first images of each class in file order: `train_per_label` of each for training,
    the next `val_per_label` of each for validation."""
    covid = sorted((release_dir / "CT_COVID").iterdir())
    negative = sorted((release_dir / "CT_NonCOVID").iterdir())
    end = train_per_label + val_per_label
    train = split_of(
        covid[:train_per_label] + negative[:train_per_label],
        [1] * train_per_label + [0] * train_per_label,
        image_size,
    )
    val = split_of(
        covid[train_per_label:end] + negative[train_per_label:end],
        [1] * val_per_label + [0] * val_per_label,
        image_size,
    )
    return train, val
