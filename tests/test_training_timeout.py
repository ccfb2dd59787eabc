"""`train.timeout_minutes`: training stops with a clear error and resumes with another limit."""

from __future__ import annotations

import pytest
import torch
from release_splits import small_splits

from ladnn.config import load_config, resume_identity
from ladnn.training import trainer
from ladnn.training.trainer import TrainingTimeout, train_model

IMAGE_SIZE = 32
SETTINGS = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    f"train.image_size={IMAGE_SIZE}",
    "train.batch_size=4",
    "train.epochs=3",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def splits(release_dir):
    return small_splits(release_dir, 6, 3, IMAGE_SIZE)


class FakeClock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limit_reached_within_first_epoch(splits, tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(trainer, "_clock", clock)
    original_augment = trainer.augment_batch

    def slow_augment(*args, **kwargs):
        clock.now += 40  # every step takes 40 s
        return original_augment(*args, **kwargs)

    monkeypatch.setattr(trainer, "augment_batch", slow_augment)
    cfg = load_config(overrides=[*SETTINGS, "train.timeout_minutes=1"])
    checkpoint = tmp_path / "run.pt"

    with pytest.raises(TrainingTimeout, match=r"after 1 min .* with 0 of 3 epochs done$"):
        train_model(cfg, *splits, checkpoint_path=checkpoint, progress=False)

    assert not checkpoint.exists()


def test_limit_at_epoch_end_keeps_checkpoint_and_resumes(splits, tmp_path, monkeypatch, caplog):
    clock = FakeClock()
    monkeypatch.setattr(trainer, "_clock", clock)

    def epoch_takes_two_minutes(record):
        clock.now += 120

    checkpoint = tmp_path / "run.pt"
    limited = load_config(overrides=[*SETTINGS, "train.timeout_minutes=3"])

    with pytest.raises(TrainingTimeout, match="2 of 3 epochs done") as stopped:
        train_model(
            limited,
            *splits,
            checkpoint_path=checkpoint,
            on_epoch=epoch_takes_two_minutes,
            progress=False,
        )
    assert str(checkpoint) in str(stopped.value)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2

    unlimited = load_config(overrides=[*SETTINGS, "train.timeout_minutes=0"])
    with caplog.at_level("INFO", logger="ladnn.training.trainer"):
        outcome = train_model(
            unlimited,
            *splits,
            checkpoint_path=checkpoint,
            resume=True,
            on_epoch=epoch_takes_two_minutes,
            progress=False,
        )

    assert "after epoch 2" in caplog.text
    assert [record["epoch"] for record in outcome.history] == [1, 2, 3]


def test_resume_identity_ignores_only_the_limit():
    base = load_config(overrides=SETTINGS)
    longer = load_config(overrides=[*SETTINGS, "train.timeout_minutes=600"])
    other = load_config(overrides=[*SETTINGS, "train.lr=0.001"])

    assert resume_identity(base) == resume_identity(longer)
    assert resume_identity(base) != resume_identity(other)
