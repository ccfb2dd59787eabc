"""`train.freeze_batchnorm` and `train.freeze_stages`: what a pretrained start keeps fixed.

Pretrained batch-norm statistics stay fixed, and the first stages of a pretrained backbone keep
their weights and statistics, while random weights learn everything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from release_splits import small_splits

from ladnn.config import load_config
from ladnn.models.backbones import create_backbone, freeze_stages, stage_count
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
# Every batch-norm layer after the frozen stages keeps training its statistics.
FROZEN_STAGES = [
    *[setting for setting in SETTINGS if not setting.startswith("train.freeze_batchnorm")],
    "train.freeze_stages=2",
    "train.lr=0.01",
]


@pytest.fixture(scope="module")
def splits(release_dir):
    return small_splits(release_dir, 4, 2, IMAGE_SIZE)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A seeded ResNet-18 whose batch-norm layers have non-trivial running statistics."""
    torch.manual_seed(1)
    module = timm.create_model("resnet18", pretrained=False)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
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


def test_stages_follow_the_network_from_the_input():
    module = timm.create_model("resnet18", pretrained=False, num_classes=0)

    frozen = freeze_stages(module, 2)

    assert stage_count(module) == 5
    assert {name.split(".")[0] for name in frozen} == {"conv1", "bn1", "layer1"}
    for name, parameter in module.named_parameters():
        assert parameter.requires_grad == (name not in frozen), name


def test_efficientnet_lite0_stages_are_stem_and_blocks():
    module = create_backbone("efficientnet_lite0").module

    frozen = freeze_stages(module, 3)

    assert stage_count(module) == 8
    assert {".".join(name.split(".")[:2]) for name in frozen} == {
        "conv_stem.weight",
        "bn1.weight",
        "bn1.bias",
        "blocks.0",
        "blocks.1",
    }
    assert all(p.requires_grad for p in module.blocks[2].parameters())


@pytest.mark.parametrize("count", [-1, 5])
def test_out_of_range_count_names_the_stage_count(count):
    module = timm.create_model("resnet18", pretrained=False, num_classes=0)

    with pytest.raises(ValueError, match=rf"freeze_stages={count} .* has 5 stages: choose 0"):
        freeze_stages(module, count)


def test_frozen_stages_keep_weights_and_statistics(splits, weights_file):
    start = torch.load(weights_file, weights_only=True)
    cfg = load_config(overrides=[*FROZEN_STAGES, f"model.weights_file={weights_file}"])

    outcome = train_model(cfg, *splits, progress=False)

    trained = outcome.model.backbone.state_dict()
    for name in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.bn2.running_var",
        "layer1.1.conv2.weight",
    ):
        assert torch.equal(trained[name], start[name]), name
    # The first trained stage moved, both its weights and its batch-norm statistics.
    for name in ("layer2.0.conv1.weight", "layer2.0.bn1.running_mean"):
        assert not torch.equal(trained[name], start[name]), name


def test_random_weights_train_every_stage(splits, caplog):
    cfg = load_config(overrides=[*FROZEN_STAGES, "model.pretrained=false"])

    with caplog.at_level(logging.WARNING, logger="ladnn.training.trainer"):
        outcome = train_model(cfg, *splits, progress=False)

    assert "train.freeze_stages ignored: resnet18 starts from random weights" in caplog.text
    assert all(p.requires_grad for p in outcome.model.parameters())
