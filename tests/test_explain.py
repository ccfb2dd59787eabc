"""Grad-CAM++ heat maps of LA-DNN outputs on real release images, and the model left untouched."""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ladnn.data.images import ImageDecodeError
from ladnn.evaluation.explain import (
    explain_image,
    save_overlays,
    select_explained_images,
    target_layer,
)
from ladnn.models.ladnn import OUTPUT_NAMES, build_model
from ladnn.training.images import load_image_tensor, to_model_input

COVID_IMAGE = "CT_COVID/2020.01.24.919183-p27-132.png"
NEGATIVE_IMAGE = "CT_NonCOVID/0.jpg"


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(module._forward_hooks)
        + len(module._forward_pre_hooks)
        + len(module._backward_hooks)
        + len(module._backward_pre_hooks)
        for module in model.modules()
    )


def _logits(model, image: Image.Image, spec, size: int) -> torch.Tensor:
    batch = to_model_input(load_image_tensor(image, size).unsqueeze(0), spec.mean, spec.std)
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def covid_path(release_dir):
    return release_dir / COVID_IMAGE


@pytest.fixture(scope="module")
def lite():
    """An EfficientNet-Lite0 LA-DNN shared by the tests that leave it as they found it."""
    model, loaded = build_model("efficientnet_lite0", pretrained=False)
    return model.eval(), loaded.spec


@pytest.fixture(scope="module")
def resnet():
    model, loaded = build_model("resnet18", pretrained=False)
    return model.eval(), loaded.spec


@pytest.mark.parametrize(
    ("backbone", "pretrained", "size"),
    [("efficientnet_lite0", False, 64), ("resnet18", False, 96), ("efficientnet_lite0", True, 64)],
)
def test_heatmaps_cover_image(backbone, pretrained, size, covid_path):
    model, loaded = build_model(backbone, pretrained=pretrained)
    model.eval()
    with Image.open(covid_path) as opened:
        width, height = opened.size
        before = _logits(model, opened.convert("RGB"), loaded.spec, size)
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]

    explanation = explain_image(model, loaded.spec, covid_path, image_size=size)

    assert list(explanation.heatmaps) == list(OUTPUT_NAMES)
    for name, heatmap in explanation.heatmaps.items():
        assert heatmap.shape == (height, width), name
        assert heatmap.min() >= 0.0, name
        assert heatmap.max() <= 1.0, name
    assert explanation.heatmaps["covid"].max() > 0.0
    assert explanation.image.shape == (height, width, 3)
    for name, probability in explanation.probabilities.items():
        assert 0.0 <= probability <= 1.0, name
    # The explanation runs with gradients recorded, so float32 results may differ slightly.
    assert explanation.probabilities["covid"] == pytest.approx(
        torch.sigmoid(before[0, 0]).item(), abs=1e-4
    )

    assert [parameter.requires_grad for parameter in model.parameters()] == requires_grad
    assert _hook_count(model) == 0
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not model.training
    with Image.open(covid_path) as opened:
        after = _logits(model, opened.convert("RGB"), loaded.spec, size)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def _full_backward_maps(model, spec, path, size: int) -> list[np.ndarray]:
    """Grad-CAM++ maps with the gradient taken back to the input, at the image's size."""
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    width, height = picture.size
    single = to_model_input(load_image_tensor(picture, size).unsqueeze(0), spec.mean, spec.std)
    batch = single.repeat(len(OUTPUT_NAMES), 1, 1, 1).requires_grad_(True)
    targets = [ClassifierOutputTarget(index) for index in range(len(OUTPUT_NAMES))]
    with GradCAMPlusPlus(model=model, target_layers=[target_layer(model, spec)]) as cam:
        maps = cam(input_tensor=batch, targets=targets)
    for parameter in model.parameters():
        parameter.grad = None
    return [np.clip(cv2.resize(item, (width, height)), 0.0, 1.0) for item in maps]


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "densenet121", "vgg16"])
def test_maps_match_full_backward(backbone, covid_path):
    model, loaded = build_model(backbone, pretrained=False)
    model.eval()
    reference = _full_backward_maps(model, loaded.spec, covid_path, 64)
    reached = []
    first = next(model.backbone.parameters())
    handle = first.register_hook(lambda grad: reached.append(grad))

    explanation = explain_image(model, loaded.spec, covid_path, image_size=64)

    handle.remove()
    # The backward pass ends at the explained layer, so the backbone's first parameter gets none.
    assert reached == []
    for name, expected in zip(OUTPUT_NAMES, reference, strict=True):
        np.testing.assert_allclose(explanation.heatmaps[name], expected, atol=1e-4, err_msg=name)


def test_explain_keeps_training_mode_and_grads(covid_path):
    model, loaded = build_model("efficientnet_lite0", pretrained=False)
    model.train()
    marker = torch.full_like(model.covid_head.weight, 7.0)
    model.covid_head.weight.grad = marker

    explain_image(model, loaded.spec, covid_path, image_size=64)

    assert model.training
    assert model.covid_head.weight.grad is marker
    assert model.lesion_head.weight.grad is None
    assert _hook_count(model) == 0


def test_explain_frozen_backbone(covid_path):
    model, loaded = build_model("resnet18", pretrained=False)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)

    explanation = explain_image(model, loaded.spec, covid_path, image_size=64)

    assert explanation.heatmaps["covid"].max() > 0.0
    assert not any(parameter.requires_grad for parameter in model.backbone.parameters())
    assert all(parameter.requires_grad for parameter in model.covid_head.parameters())


def test_explain_baseline_has_covid_map_only(release_dir):
    model, loaded = build_model("efficientnet_lite0", "baseline", pretrained=False)

    explanation = explain_image(model, loaded.spec, release_dir / NEGATIVE_IMAGE, image_size=64)

    assert list(explanation.heatmaps) == ["covid"]
    assert list(explanation.probabilities) == ["covid"]


def test_explain_accepts_bytes_and_pil(covid_path, lite):
    model, spec = lite

    from_path = explain_image(model, spec, covid_path, image_size=64)
    from_bytes = explain_image(model, spec, covid_path.read_bytes(), image_size=64)
    with Image.open(covid_path) as opened:
        from_pil = explain_image(model, spec, opened, image_size=64)

    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(from_bytes.heatmaps[name], from_path.heatmaps[name], atol=1e-5)
        np.testing.assert_allclose(from_pil.heatmaps[name], from_path.heatmaps[name], atol=1e-5)


def test_explain_rejects_broken_bytes(covid_path, lite):
    model, spec = lite
    truncated = covid_path.read_bytes()[:2000]

    with pytest.raises(ImageDecodeError, match="upload.png"):
        explain_image(model, spec, truncated, image_size=64, name="upload.png")
    with pytest.raises(ImageDecodeError, match="empty"):
        explain_image(model, spec, b"", image_size=64)
    assert _hook_count(model) == 0


def test_save_overlays_writes_png_per_output(tmp_path, release_dir, lite):
    model, spec = lite
    path = release_dir / NEGATIVE_IMAGE

    explanation = explain_image(model, spec, path, image_size=64)
    paths = save_overlays(explanation, tmp_path / "overlays")

    assert sorted(paths) == sorted(OUTPUT_NAMES)
    with Image.open(path) as original:
        size = original.size
    for name, written in paths.items():
        assert written == tmp_path / "overlays" / f"{name}.png"
        with Image.open(written) as overlay:
            assert overlay.format == "PNG"
            assert overlay.mode == "RGB"
            assert overlay.size == size


def test_target_layer_per_family(lite, resnet):
    lite_model, lite_spec = lite
    resnet_model, resnet_spec = resnet

    assert target_layer(lite_model, lite_spec) is lite_model.backbone.bn2
    assert target_layer(resnet_model, resnet_spec) is resnet_model.backbone.layer4


def test_target_layer_unknown_family(resnet):
    model, spec = resnet
    unknown = dataclasses.replace(spec, timm_name="mobilenetv3_large_100")

    with pytest.raises(ValueError, match="no Grad-CAM target layer"):
        target_layer(model, unknown)


def test_selected_images_two_per_label():
    frame = pd.DataFrame(
        {
            "image_id": ["f", "a", "e", "b", "d", "c"],
            "label": [1, 1, 0, 0, 1, 0],
        }
    )

    chosen = select_explained_images(frame)

    assert list(chosen["image_id"]) == ["a", "d", "b", "c"]
    assert list(chosen["label"]) == [1, 1, 0, 0]


def test_heatmap_of_png_bytes_matches_size(resnet):
    model, spec = resnet
    buffer = io.BytesIO()
    Image.new("L", (50, 30), color=128).save(buffer, format="PNG")

    explanation = explain_image(model, spec, buffer.getvalue(), image_size=64)

    assert explanation.heatmaps["covid"].shape == (30, 50)
