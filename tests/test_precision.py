"""`train.precision`: bfloat16 autocast in the training step, chosen by hardware under "auto"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from release_splits import small_splits

from ladnn.config import load_config
from ladnn.training import trainer
from ladnn.training.trainer import predict, train_model, training_precision

IMAGE_SIZE = 32
SETTINGS = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    f"train.image_size={IMAGE_SIZE}",
    "train.batch_size=4",
    "train.epochs=2",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def splits(release_dir):
    return small_splits(release_dir, 6, 3, IMAGE_SIZE)


def _train_recording_dtypes(splits, monkeypatch, precision: str):
    """Train with `precision` and return the outcome and the dtypes of the first convolution's
    outputs in training-mode forward passes."""
    seen: set[torch.dtype] = set()
    original = trainer.build_model

    def recording_build_model(*args, **kwargs):
        model, loaded = original(*args, **kwargs)
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

        def hook(module, inputs, output):
            if module.training:
                seen.add(output.dtype)

        first_conv.register_forward_hook(hook)
        return model, loaded

    monkeypatch.setattr(trainer, "build_model", recording_build_model)
    cfg = load_config(overrides=[*SETTINGS, f"train.precision={precision}"])
    outcome = train_model(cfg, *splits, progress=False)
    return outcome, seen


def test_bfloat16_step_keeps_float32_weights(splits, monkeypatch):
    outcome, seen = _train_recording_dtypes(splits, monkeypatch, "bfloat16")

    assert outcome.precision == "bfloat16"
    assert seen == {torch.bfloat16}
    assert {p.dtype for p in outcome.model.parameters()} == {torch.float32}
    assert np.isfinite([record["train_loss"] for record in outcome.history]).all()
    train, _ = splits
    scores = predict(
        outcome.model, train.pixels, outcome.backbone.spec.mean, outcome.backbone.spec.std
    )
    assert scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()


def test_float32_runs_the_step_in_float32(splits, monkeypatch):
    outcome, seen = _train_recording_dtypes(splits, monkeypatch, "float32")

    assert outcome.precision == "float32"
    assert seen == {torch.float32}


def test_bfloat16_training_follows_float32_closely(splits, monkeypatch):
    bf16, _ = _train_recording_dtypes(splits, monkeypatch, "bfloat16")
    fp32, _ = _train_recording_dtypes(splits, monkeypatch, "float32")

    losses = np.array([[r["train_loss"] for r in run.history] for run in (bf16, fp32)])
    assert not np.array_equal(losses[0], losses[1])
    np.testing.assert_allclose(losses[0], losses[1], rtol=0.05)


@pytest.mark.parametrize(("supported", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_follows_bfloat16_units(monkeypatch, supported, expected):
    monkeypatch.setattr(trainer, "_has_bfloat16_units", lambda: supported)

    assert training_precision("auto", torch.device("cpu")) == expected
    assert training_precision("float32", torch.device("cpu")) == "float32"
    assert training_precision("bfloat16", torch.device("cpu")) == "bfloat16"


def test_bfloat16_probe_matches_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = {
        flag
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }

    assert trainer._has_bfloat16_units() == bool({"amx_tile", "avx512_bf16"} & flags)


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="train.precision"):
        load_config(overrides=["train.precision=float16"])
