"""Contrastive pretraining: the NT-Xent loss, the views, resumption, and the weights file that
supervised training loads, on real release images."""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from release_splits import small_splits
from safetensors.torch import load_file
from typer.testing import CliRunner

from ladnn.cli import app
from ladnn.config import load_config
from ladnn.models.backbones import create_backbone
from ladnn.models.ladnn import build_model
from ladnn.tracking.store import mlflow_client
from ladnn.training.contrastive import (
    ContrastiveCfg,
    ProbeData,
    contrastive_views,
    linear_probe_auc,
    nt_xent_loss,
    pretrain_backbone,
)

SIZE = 64
SMALL = ContrastiveCfg(epochs=2, batch_size=8, image_size=SIZE, probe_every=1)


def _hand_nt_xent(first: np.ndarray, second: np.ndarray, temperature: float) -> float:
    """NT-Xent written out row by row, as in SimCLR's definition."""
    views = np.concatenate([first, second])
    views = views / np.linalg.norm(views, axis=1, keepdims=True)
    count = len(first)
    losses = []
    for i in range(2 * count):
        positive = (i + count) % (2 * count)
        logits = {j: views[i] @ views[j] / temperature for j in range(2 * count) if j != i}
        denominator = sum(math.exp(value) for value in logits.values())
        losses.append(-math.log(math.exp(logits[positive]) / denominator))
    return sum(losses) / len(losses)


def test_nt_xent_matches_hand_computation():
    generator = np.random.default_rng(3)
    first = generator.normal(size=(4, 5))
    second = generator.normal(size=(4, 5))
    loss = nt_xent_loss(torch.tensor(first), torch.tensor(second), temperature=0.5)
    assert loss.item() == pytest.approx(_hand_nt_xent(first, second, 0.5), rel=1e-5)


def test_nt_xent_lower_for_matching_views():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 16, generator=generator)
    noise = 0.05 * torch.randn(8, 16, generator=generator)
    matched = nt_xent_loss(images, images + noise, temperature=0.2)
    shuffled = nt_xent_loss(images, images[torch.roll(torch.arange(8), 1)] + noise, 0.2)
    assert matched < shuffled


def test_nt_xent_rejects_unpaired_batches():
    with pytest.raises(ValueError, match="do not pair up"):
        nt_xent_loss(torch.zeros(4, 8), torch.zeros(3, 8), 0.2)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        ContrastiveCfg(batch_size=1)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveCfg(temperature=0)
    with pytest.raises(ValueError, match="max_zoom"):
        ContrastiveCfg(max_zoom=0.5)
    with pytest.raises(ValueError, match="keep"):
        ContrastiveCfg(keep="first")


@pytest.fixture(scope="module")
def images(release_dir):
    train, val = small_splits(release_dir, train_per_label=8, val_per_label=6, image_size=SIZE)
    return train, val


def test_views_differ_and_follow_the_seed(images):
    train, _ = images
    first, second = contrastive_views(train.pixels, torch.Generator().manual_seed(1), SMALL)
    assert first.shape == second.shape == train.pixels.shape
    assert first.min() >= 0
    assert first.max() <= 255
    assert not torch.equal(first, second)
    again, _ = contrastive_views(train.pixels, torch.Generator().manual_seed(1), SMALL)
    assert torch.equal(first, again)


def _cfg(*overrides: str):
    return load_config(overrides=["train.threads=2", "train.precision=float32", *overrides])


def _ids(count: int) -> list[str]:
    return [f"image-{index}" for index in range(count)]


def test_pretrained_weights_load_for_training(images, tmp_path):
    """The written file contains the pretrained backbone, and `model.weights_file` loads it."""
    train, val = images
    probe = ProbeData(train.pixels, train.covid.numpy(), val.pixels, val.covid.numpy())
    output = tmp_path / "lite0.safetensors"
    settings = replace(SMALL, keep="last")
    outcome = pretrain_backbone(
        _cfg(), settings, train.pixels, _ids(len(train)), output, probe=probe, progress=False
    )
    assert [record["epoch"] for record in outcome.history] == [0, 1, 2]
    assert all(0 <= record["probe_val_auc"] <= 1 for record in outcome.history)
    assert all(math.isfinite(record["loss"]) for record in outcome.history[1:])
    assert outcome.weights_source.startswith("pypi:")
    assert outcome.kept_epoch == 2

    saved = load_file(str(output))
    imagenet = create_backbone("efficientnet_lite0").module.state_dict()
    assert set(saved) == set(imagenet)
    changed = [name for name in saved if not torch.equal(saved[name], imagenet[name])]
    assert len(changed) > len(saved) // 2

    model, loaded = build_model("efficientnet_lite0", weights_file=str(output))
    assert loaded.pretrained and loaded.weights_source == str(output)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_interrupted_pretraining_resumes_to_the_same_weights(images, tmp_path, caplog):
    train, _ = images
    ids = _ids(len(train))
    straight = tmp_path / "straight.safetensors"
    pretrain_backbone(_cfg(), SMALL, train.pixels, ids, straight, progress=False)

    class Stop(Exception):
        pass

    def stop_in_second(record):
        # Epoch 1's checkpoint is on disk; epoch 2 ends before its own is written.
        if record["epoch"] == 2:
            raise Stop

    checkpoint = tmp_path / "pretrain.pt"
    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(Stop):
        pretrain_backbone(
            _cfg(),
            SMALL,
            train.pixels,
            ids,
            resumed,
            checkpoint_path=checkpoint,
            on_epoch=stop_in_second,
            progress=False,
        )
    assert not resumed.exists()
    caplog.set_level("INFO", logger="ladnn.training.contrastive")
    outcome = pretrain_backbone(
        _cfg(),
        SMALL,
        train.pixels,
        ids,
        resumed,
        checkpoint_path=checkpoint,
        resume=True,
        progress=False,
    )
    assert "after epoch 1" in caplog.text
    assert [record["epoch"] for record in outcome.history] == [1, 2]
    expected, actual = load_file(str(straight)), load_file(str(resumed))
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-6, msg=name)

    with pytest.raises(ValueError, match="other settings or images"):
        pretrain_backbone(
            _cfg(),
            SMALL,
            train.pixels,
            _ids(len(train) + 1)[1:],
            resumed,
            checkpoint_path=checkpoint,
            resume=True,
            progress=False,
        )


def test_best_probe_epoch_kept_across_resume(images, tmp_path, monkeypatch):
    """The weights file contains the epoch with the best probe AUC, also after an interruption."""
    import ladnn.training.contrastive as contrastive

    train, val = images
    probe = ProbeData(train.pixels, train.covid.numpy(), val.pixels, val.covid.numpy())
    # Probe scores for epochs 0, 1 and 2, then epoch 2 again after the resume; 0.5 after that.
    scores = iter([0.5, 0.9, 0.6, 0.6])
    monkeypatch.setattr(contrastive, "linear_probe_auc", lambda *args: next(scores, 0.5))

    class Stop(Exception):
        pass

    def stop_in_second(record):
        if record["epoch"] == 2:
            raise Stop

    checkpoint = tmp_path / "pretrain.pt"
    output = tmp_path / "best.safetensors"
    with pytest.raises(Stop):
        pretrain_backbone(
            _cfg(),
            SMALL,
            train.pixels,
            _ids(len(train)),
            output,
            probe=probe,
            checkpoint_path=checkpoint,
            on_epoch=stop_in_second,
            progress=False,
        )
    epoch_one = torch.load(checkpoint, weights_only=True)["backbone"]
    outcome = pretrain_backbone(
        _cfg(),
        SMALL,
        train.pixels,
        _ids(len(train)),
        output,
        probe=probe,
        checkpoint_path=checkpoint,
        resume=True,
        progress=False,
    )
    assert outcome.kept_epoch == 1
    assert [record["probe_val_auc"] for record in outcome.history] == [0.5, 0.9, 0.6]
    saved = load_file(str(output))
    for name, tensor in epoch_one.items():
        assert torch.equal(saved[name], tensor), name

    last = pretrain_backbone(
        _cfg(),
        replace(SMALL, keep="last"),
        train.pixels,
        _ids(len(train)),
        tmp_path / "last.safetensors",
        probe=probe,
        progress=False,
    )
    assert last.kept_epoch == 2


def test_too_few_images_for_a_batch(images, tmp_path):
    train, _ = images
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        pretrain_backbone(
            _cfg(), ContrastiveCfg(), train.pixels, _ids(len(train)), tmp_path / "w.safetensors"
        )


def test_probe_separates_real_classes(release_dir):
    """With ImageNet features the probe scores well above chance on real images, and with a
    single validation class it returns NaN."""
    train, val = small_splits(release_dir, train_per_label=60, val_per_label=25, image_size=128)
    backbone = create_backbone("efficientnet_lite0")
    mean, std = backbone.spec.mean, backbone.spec.std
    labels = train.covid.numpy()
    auc = linear_probe_auc(
        backbone.module,
        ProbeData(train.pixels, labels, val.pixels, val.covid.numpy()),
        mean,
        std,
        torch.device("cpu"),
    )
    # 0.659 with these images.
    assert 0.6 < auc <= 1.0
    unknown = ProbeData(train.pixels, labels, val.pixels, np.ones(len(val)))
    assert math.isnan(linear_probe_auc(backbone.module, unknown, mean, std, torch.device("cpu")))


@pytest.mark.slow
def test_pretrain_command_logs_a_run_that_training_uses(imported_release, tmp_path):
    """`ladnn pretrain` on the imported release writes weights and an MLflow run, and
    `ladnn train` starts from those weights."""
    from ladnn.data.release import RELEASE_BATCH_ID
    from ladnn.data.versioning import commit_version
    from ladnn.workspace import Workspace

    root = tmp_path / "root"
    shutil.copytree(imported_release.root, root)
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    commit_version(root, workspace, RELEASE_BATCH_ID)
    options = ["--workspace", str(workspace.root), "--set", f"data.root={root}"]
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            *options,
            "pretrain",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--image-size",
            "64",
            "--probe-every",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    weights = re.search(r"weights: (\S+)", result.output).group(1)
    run_id = re.search(r"run ([0-9a-f]{32})", result.output).group(1)
    assert "linear-probe validation AUC" in result.output

    client: MlflowClient = mlflow_client(f"sqlite:///{workspace.mlflow_dir / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "ladnn-pretraining"
    assert run.data.tags["kind"] == "contrastive-pretraining"
    assert run.data.params["n_images"] == "425"
    assert [metric.step for metric in client.get_metric_history(run_id, "probe_val_auc")] == [0, 1]
    assert [artifact.path for artifact in client.list_artifacts(run_id, "weights")] == [
        f"weights/{weights.rsplit('/', 1)[-1]}"
    ]
    assert not list(workspace.checkpoints_dir.glob("pretrain-*"))

    tiny = ["train.epochs=1", "train.image_size=64", "eval.bootstrap=20", "eval.tta=false"]
    train_options = [*options, *[item for o in tiny for item in ("--set", o)]]
    result = runner.invoke(
        app, [*train_options, "--set", f"model.weights_file={weights}", "train", "--no-register"]
    )
    assert result.exit_code == 0, result.output
    trained = re.search(r"run ([0-9a-f]{32})", result.output).group(1)
    tags = client.get_run(trained).data.tags
    assert tags["weights_source"] == weights
    assert tags["initialisation"] == "weights-file"
