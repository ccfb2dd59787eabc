"""LA-DNN: a CNN backbone with a COVID-19 head and an auxiliary five-lesion head, and its loss."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ladnn.data.lesions import LESIONS
from ladnn.models.backbones import LoadedBackbone, create_backbone

__all__ = ["LADNN", "OUTPUT_NAMES", "build_model", "ladnn_loss"]

Variant = Literal["ladnn", "baseline"]

# Output columns of the network, in order: the COVID-19 logit then one logit per lesion.
OUTPUT_NAMES = ("covid", *LESIONS)


class LADNN(nn.Module):
    """Backbone features feed a COVID-19 logit and, for the "ladnn" variant, five lesion logits.

    The forward pass returns logits of shape (N, 6) for "ladnn" and (N, 1) for "baseline"; column 0
    is always the COVID-19 logit.
    """

    def __init__(self, backbone: nn.Module, num_features: int, variant: Variant, drop_rate: float):
        super().__init__()
        if variant not in ("ladnn", "baseline"):
            raise ValueError(f"unknown variant {variant!r}: expected 'ladnn' or 'baseline'")
        self.variant = variant
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.covid_head = nn.Linear(num_features, 1)
        self.lesion_head = nn.Linear(num_features, len(LESIONS)) if variant == "ladnn" else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.dropout(self.backbone(images))
        covid = self.covid_head(features)
        if self.lesion_head is None:
            return covid
        return torch.cat([covid, self.lesion_head(features)], dim=1)


def build_model(
    backbone: str,
    variant: Variant = "ladnn",
    *,
    pretrained: bool = True,
    weights_file: str | None = None,
    drop_rate: float = 0.2,
) -> tuple[LADNN, LoadedBackbone]:
    loaded = create_backbone(backbone, pretrained=pretrained, weights_file=weights_file or None)
    model = LADNN(loaded.module, loaded.num_features, variant, drop_rate)
    return model, loaded


def ladnn_loss(
    logits: torch.Tensor,
    covid: torch.Tensor,
    lesions: torch.Tensor | None,
    *,
    covid_weight: float = 5.0,
) -> torch.Tensor:
    """Per-element binary cross-entropy with unknown lesions masked out.

    `covid` contains 0/1 targets of shape (N,). `lesions` has shape (N, 5) with 0, 1 or NaN for
    unknown; NaN terms contribute nothing. The COVID term is weighted `covid_weight` and every known
    lesion term 1; the sum is divided by the total weight of the terms that count, so a batch without
    any known lesion reduces to the COVID loss alone.
    """
    if logits.ndim != 2 or logits.shape[0] != covid.shape[0]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not match {covid.shape[0]} COVID targets"
        )
    covid_terms = F.binary_cross_entropy_with_logits(logits[:, 0], covid.float(), reduction="none")
    total = covid_weight * covid_terms.sum()
    weight = covid_weight * covid_terms.numel()

    if logits.shape[1] > 1 and lesions is not None:
        if lesions.shape != (logits.shape[0], logits.shape[1] - 1):
            raise ValueError(
                f"lesion targets of shape {tuple(lesions.shape)} do not match logits of shape "
                f"{tuple(logits.shape)}"
            )
        known = ~torch.isnan(lesions)
        targets = torch.where(known, lesions, torch.zeros_like(lesions))
        lesion_terms = F.binary_cross_entropy_with_logits(
            logits[:, 1:], targets.float(), reduction="none"
        )
        total = total + (lesion_terms * known).sum()
        weight = weight + known.sum()

    return total / weight
