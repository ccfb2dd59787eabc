"""Grad-CAM++ heat maps of the COVID-19 output and of each lesion output of an LA-DNN model.

The maps come from `pytorch_grad_cam.GradCAMPlusPlus` on the last convolutional block of the
backbone. All outputs of one image are explained in one forward and one backward pass. The backbone
runs once, up to the explained layer. That layer's feature map is repeated once per output and
enters the rest of the model as a new leaf tensor, and batch element i targets output column i.
Grad-CAM++ needs only the gradient of that feature map, so the backward pass stops there.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ladnn.data.images import PNG_COMPRESS_LEVEL, normalise_image
from ladnn.data.store import DatasetStore
from ladnn.models.backbones import BackboneSpec
from ladnn.models.ladnn import LADNN, OUTPUT_NAMES
from ladnn.training.images import load_image_tensor, to_model_input

__all__ = [
    "Explanation",
    "TARGET_LAYERS",
    "target_layer",
    "explain_image",
    "overlay_image",
    "save_overlays",
    "select_explained_images",
    "save_split_overlays",
]

logger = logging.getLogger(__name__)

# Prefix of the timm model name -> attribute of the timm model that outputs the last activated
# convolutional feature map. Longer prefixes are matched first.
TARGET_LAYERS = {
    "tf_efficientnet": "bn2",
    "efficientnet": "bn2",
    "resnet": "layer4",
    "densenet": "features",
    "vgg": "features",
}


@dataclass
class Explanation:
    """Grad-CAM++ result for one image, at the image's own width and height."""

    # RGB pixels of shape (H, W, 3), float32 in [0, 1].
    image: np.ndarray
    # Sigmoid probability per output name ("covid", then the lesions for the "ladnn" variant).
    probabilities: dict[str, float]
    # Heat map per output name, shape (H, W), float32 in [0, 1].
    heatmaps: dict[str, np.ndarray]


def target_layer(model: LADNN, spec: BackboneSpec) -> nn.Module:
    """Return the backbone module whose output Grad-CAM++ weighs: its last convolutional block."""
    for prefix in sorted(TARGET_LAYERS, key=len, reverse=True):
        if spec.timm_name.startswith(prefix):
            attribute = TARGET_LAYERS[prefix]
            layer = getattr(model.backbone, attribute, None)
            if isinstance(layer, nn.Module):
                return layer
            raise ValueError(
                f"backbone {spec.name} ({spec.timm_name}) has no module {attribute!r} to explain"
            )
    raise ValueError(
        f"no Grad-CAM target layer is known for backbone {spec.name} ({spec.timm_name}): "
        f"expected a timm model name starting with one of {sorted(TARGET_LAYERS)}"
    )


def _cut_graph(copies: int):
    """Return a forward hook that repeats its module's output `copies` times as a new leaf tensor
    that requires the gradient."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        repeats = (copies,) + (1,) * (output.dim() - 1)
        return output.detach().repeat(repeats).requires_grad_(True)

    return hook


def _decode(image: Image.Image | bytes | Path, name: str) -> Image.Image:
    """Decode bytes or a file with the import rules; a PIL image is converted to RGB as given."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Path):
        name = str(image)
        image = image.read_bytes()
    return normalise_image(bytes(image), name).image


def explain_image(
    model: LADNN,
    spec: BackboneSpec,
    image: Image.Image | bytes | Path,
    *,
    image_size: int,
    name: str = "image",
    layer: nn.Module | None = None,
) -> Explanation:
    """Compute Grad-CAM++ maps of every model output for one image.

    `image` is a decoded PIL image, encoded bytes or a file path. Bytes and files are decoded as
    the importer decodes them, and raise `ImageDecodeError` naming `name` (or the path) when they
    are not a valid image. The model receives the image as in training: grey, resized to
    `image_size` and normalised with the backbone's mean and std. The maps are resized to the
    image's size.

    The model is left as it was found: its forward hooks are removed, its train/eval mode and
    the `.grad` of its parameters are restored, and `requires_grad` is never changed (the
    explained layer's output requires the gradient instead, so frozen backbones are explained
    too).
    """
    picture = _decode(image, name)
    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    outputs = OUTPUT_NAMES[:1] if model.lesion_head is None else OUTPUT_NAMES
    device = next(model.parameters()).device
    pixels = load_image_tensor(picture, image_size).unsqueeze(0)
    single = to_model_input(pixels, spec.mean, spec.std).to(device)
    targets = [ClassifierOutputTarget(index) for index in range(len(outputs))]

    was_training = model.training
    saved_grads = [(parameter, parameter.grad) for parameter in model.parameters()]
    explained = layer or target_layer(model, spec)
    cam = GradCAMPlusPlus(model=model, target_layers=[explained])
    # Prepended so that it runs before Grad-CAM++'s own hook, which then records the leaf.
    cut = explained.register_forward_hook(_cut_graph(len(outputs)), prepend=True)
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=single, targets=targets)
            logits = cam.outputs[0].detach().float().cpu()
    finally:
        # Releasing removes the forward hooks; the gradient hooks belong to this call's tensors.
        cam.activations_and_grads.release()
        cut.remove()
        cam.outputs = None
        for parameter, grad in saved_grads:
            parameter.grad = grad
        model.train(was_training)

    probabilities = torch.sigmoid(logits).tolist()
    height, width = rgb.shape[:2]
    heatmaps = {}
    for index, output in enumerate(outputs):
        resized = cv2.resize(maps[index], (width, height), interpolation=cv2.INTER_LINEAR)
        heatmaps[output] = np.clip(resized, 0.0, 1.0).astype(np.float32)
    return Explanation(
        image=rgb,
        probabilities={output: float(probabilities[i]) for i, output in enumerate(outputs)},
        heatmaps=heatmaps,
    )


def overlay_image(explanation: Explanation, output: str, image_weight: float = 0.5) -> np.ndarray:
    """Blend the heat map of `output` (JET colour map) onto the image; return RGB uint8 pixels."""
    return show_cam_on_image(
        explanation.image, explanation.heatmaps[output], use_rgb=True, image_weight=image_weight
    )


def save_overlays(explanation: Explanation, folder: Path, prefix: str = "") -> dict[str, Path]:
    """Write one overlay PNG per output, `<folder>/<prefix><output>.png`; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for output in explanation.heatmaps:
        path = folder / f"{prefix}{output}.png"
        buffer = io.BytesIO()
        overlay = Image.fromarray(overlay_image(explanation, output))
        overlay.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        path.write_bytes(buffer.getvalue())
        paths[output] = path
    return paths


def select_explained_images(frame: pd.DataFrame, per_label: int = 2) -> pd.DataFrame:
    """Pick the first `per_label` COVID and `per_label` negative rows by sorted image id.

    The choice depends only on the split's content, so runs on the same data explain the same
    images.
    """
    ordered = frame.sort_values("image_id", kind="stable")
    chosen = [ordered[ordered["label"] == label].head(per_label) for label in (1, 0)]
    return pd.concat(chosen).reset_index(drop=True)


def save_split_overlays(
    model: LADNN,
    spec: BackboneSpec,
    store: DatasetStore,
    frame: pd.DataFrame,
    folder: Path,
    *,
    image_size: int,
    per_label: int = 2,
) -> list[Path]:
    """Write overlays of the images `select_explained_images` picks from `frame`.

    Each image gets a folder `<covid|negative>-<image_id>` with one PNG per output.
    """
    paths: list[Path] = []
    for row in select_explained_images(frame, per_label).itertuples(index=False):
        explanation = explain_image(
            model, spec, store.image_path(row.image_id), image_size=image_size
        )
        label = "covid" if row.label == 1 else "negative"
        written = save_overlays(explanation, folder / f"{label}-{row.image_id}")
        paths.extend(written.values())
    return paths
