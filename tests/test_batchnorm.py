"""`train.freeze_batchnorm`: pretrained statistics stay fixed, and random weights learn theirs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from release_splits import small_splits

from ladnn.config import load_config
from ladnn.training.trainer import train_model

IMAGE_SIZE = 32
SETTINGS = [
    "model.backbone=resnet18",
    "model.variant=baseline",
    f"train.image_size={IMAGE_SIZE}",
    "train.batch_size=4",
    "train.epochs=1",
    "train.threads=1",
    "train.freeze_batchnorm=true",
]


@pytest.fixture(scope="module")
def splits(release_dir):
    return small_splits(release_dir, 4, 2, IMAGE_SIZE)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A seeded ResNet-18 whose first batch-norm layer has non-trivial running statistics."""
    torch.manual_seed(1)
    module = timm.create_model("resnet18", pretrained=False)
    module.bn1.running_mean.uniform_(-0.5, 0.5)
    module.bn1.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(module.state_dict(), path)
    return path


def _first_running_mean(model: torch.nn.Module) -> torch.Tensor:
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return norm.running_mean.detach().clone()


def test_pretrained_statistics_stay_fixed(splits, weights_file):
    start = torch.load(weights_file, weights_only=True)["bn1.running_mean"]
    cfg = load_config(overrides=[*SETTINGS, f"model.weights_file={weights_file}"])

    outcome = train_model(cfg, *splits, progress=False)

    assert outcome.backbone.pretrained
    assert torch.equal(_first_running_mean(outcome.model), start)


def test_random_weights_learn_their_statistics(splits, caplog):
    cfg = load_config(overrides=[*SETTINGS, "model.pretrained=false"])

    with caplog.at_level(logging.WARNING, logger="ladnn.training.trainer"):
        outcome = train_model(cfg, *splits, progress=False)

    assert not outcome.backbone.pretrained
    # A fresh batch-norm layer starts at mean 0, and training on the batches moved it.
    assert _first_running_mean(outcome.model).abs().max() > 0
    assert "train.freeze_batchnorm ignored: resnet18 starts from random weights" in caplog.text
