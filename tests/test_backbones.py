"""Backbone registry: packaged ImageNet weights, local weights files and the offline fallback."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from matplotlib import cbook
from PIL import Image
from safetensors.torch import save_file

from ladnn.models.backbones import (
    BACKBONES,
    _load_weights_file,
    _packaged_weights_path,
    create_backbone,
    list_backbones,
)

BACKBONE_LOGGER = "ladnn.models.backbones"

# EfficientNet-Lite backbones and the input side each was trained at.
LITES = [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]

# The seven backbones that the LA-DNN paper compares, marked `in_paper` in the registry.
PAPER_BACKBONES = (
    "vgg16",
    "resnet18",
    "resnet50",
    "densenet121",
    "densenet169",
    "efficientnet_b0",
    "efficientnet_b1",
)

# ImageNet-1k index of "military uniform", the label of matplotlib's Grace Hopper portrait.
MILITARY_UNIFORM = 652


def sample_image(size: int) -> torch.Tensor:
    """Load matplotlib's Grace Hopper portrait as a (1, 3, size, size) input scaled to [-1, 1]."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
    return ((pixels.permute(2, 0, 1) - 0.5) / 0.5).unsqueeze(0)


@cache
def packaged_classifier(name: str) -> torch.nn.Module:
    """Build timm's full classifier for `name` with the weights file of its PyPI package.

    Built once per name for the whole session; tests only run it in eval mode without gradients.
    """
    spec = BACKBONES[name]
    model = timm.create_model(spec.timm_name)
    _load_weights_file(model, _packaged_weights_path(spec))
    return model.eval()


def backbone_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == BACKBONE_LOGGER and r.levelno == logging.WARNING]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path: Path) -> None:
    """Switch huggingface_hub to offline mode with an empty cache, so timm can download nothing.

    The library reads HF_HUB_OFFLINE once at import, so the module constant is set here.
    """
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Record each request on the server and reply 404, like a Hub without the file."""

    def _record_and_reject(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = _record_and_reject
    do_HEAD = _record_and_reject

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub():
    """Serve a stand-in Hugging Face Hub on localhost that records every request it gets."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("name", [name for name, _ in LITES])
def test_lite_loads_packaged_weights(name: str):
    loaded = create_backbone(name)

    assert loaded.pretrained is True
    assert loaded.weights_source.startswith("pypi:")
    assert loaded.weights_source == f"pypi:{BACKBONES[name].weights_package[0]}"
    assert loaded.num_features == loaded.module.num_features


@pytest.mark.parametrize("name", [name for name, _ in LITES])
def test_lite_checkpoint_needs_order_mapping(name: str):
    spec = BACKBONES[name]
    state = torch.load(_packaged_weights_path(spec), map_location="cpu", weights_only=True)
    target = timm.create_model(spec.timm_name).state_dict()

    # Names differ but counts match, so loading goes through the in-order mapping.
    assert set(state) != set(target)
    assert len(state) == len(target)


@pytest.mark.parametrize(("name", "size"), LITES)
def test_lite_classifies_sample_image(name: str, size: int):
    model = packaged_classifier(name)

    with torch.no_grad():
        logits = model(sample_image(size))

    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == MILITARY_UNIFORM


@pytest.mark.parametrize(("name", "size"), LITES)
def test_lite_features_match_classifier(name: str, size: int):
    classifier = packaged_classifier(name)
    backbone = create_backbone(name).module.eval()
    image = sample_image(size)

    with torch.no_grad():
        expected = classifier.forward_head(classifier.forward_features(image), pre_logits=True)
        features = backbone(image)

    assert features.shape == expected.shape
    assert torch.allclose(features, expected, atol=1e-5)


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as raised:
        create_backbone("resnet9000")

    for name in list_backbones():
        assert name in str(raised.value)


def test_missing_weights_warns(offline_hub, caplog):
    caplog.set_level(logging.WARNING, logger=BACKBONE_LOGGER)

    loaded = create_backbone("resnet18")

    warnings = backbone_warnings(caplog)
    assert loaded.pretrained is False
    assert loaded.weights_source == "none"
    assert len(warnings) == 1
    assert "resnet18" in warnings[0].getMessage()


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_pretrained_false_skips_weights(name: str, caplog):
    caplog.set_level(logging.WARNING, logger=BACKBONE_LOGGER)

    loaded = create_backbone(name, pretrained=False)

    warnings = backbone_warnings(caplog)
    assert loaded.pretrained is False
    assert loaded.weights_source == "none"
    assert warnings == []


def test_timm_cache_lookup_sends_no_request(local_hub, tmp_path: Path):
    # A fresh interpreter reads HF_ENDPOINT at import, so its only Hub is the local server. With an
    # empty cache, the lookup of timm's cached weights must still send no request to it.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")
    }
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{local_hub.server_address[1]}"
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    script = (
        "from ladnn.models.backbones import create_backbone\n"
        "print(create_backbone('resnet18').weights_source)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
    assert local_hub.requests == []


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"encoder.layer{i}": tensor for i, tensor in enumerate(state.values())}


# How a local checkpoint is written: file suffix and the object saved from a state dict.
WEIGHTS_FORMATS = {
    "state dict": (".pth", lambda state: state),
    "wrapped state dict": (".pth", lambda state: {"state_dict": state}),
    "other tensor names": (".pth", _renamed),
    "safetensors": (".safetensors", lambda state: state),
}


@pytest.mark.parametrize("layout", WEIGHTS_FORMATS)
def test_local_weights_file_loads(layout: str, tmp_path: Path):
    suffix, wrap = WEIGHTS_FORMATS[layout]
    source = timm.create_model("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(wrap(source.state_dict()), str(path))
    else:
        torch.save(wrap(source.state_dict()), path)

    loaded = create_backbone("resnet18", weights_file=path)

    assert loaded.pretrained is True
    assert loaded.weights_source == str(path)
    assert torch.equal(loaded.module.conv1.weight, source.conv1.weight)
    assert torch.equal(loaded.module.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_missing_weights_file_raises(tmp_path: Path):
    path = tmp_path / "absent.pth"

    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_backbone("resnet18", weights_file=path)


def test_weights_file_count_mismatch_raises(tmp_path: Path):
    state = timm.create_model("resnet18").state_dict()
    del state["fc.bias"]
    path = tmp_path / "short.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match="expected"):
        create_backbone("resnet18", weights_file=path)


def test_weights_file_without_classifier_loads(tmp_path: Path):
    """A backbone saved after its classifier was removed, as `ladnn pretrain` writes it, loads."""
    module = timm.create_model("resnet18")
    module.reset_classifier(0)
    state = module.state_dict()
    path = tmp_path / "headless.pth"
    torch.save(state, path)

    loaded = create_backbone("resnet18", weights_file=path)

    assert loaded.pretrained
    for name, tensor in loaded.module.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_list_backbones_has_paper_set():
    names = list_backbones()

    for name in (*PAPER_BACKBONES, *(lite for lite, _ in LITES)):
        assert name in names
    assert {name for name, spec in BACKBONES.items() if spec.in_paper} == set(PAPER_BACKBONES)
