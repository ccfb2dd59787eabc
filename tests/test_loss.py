"""LA-DNN loss against hand-computed values, and the output shapes of the two model variants."""

from __future__ import annotations

import math

import pytest
import torch

from ladnn.models.ladnn import OUTPUT_NAMES, build_model, ladnn_loss

NAN = math.nan
LN2 = math.log(2.0)


def bce(logit: float, target: float) -> float:
    """Binary cross-entropy of one logit against a 0/1 target, computed by hand."""
    probability = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(probability) + (1.0 - target) * math.log(1.0 - probability))


# Two samples: the first has four known lesions and one unknown, the second only unknown lesions.
# The logits at unknown positions are large, so counting them as absent would change the loss.
MIXED_LOGITS = [[1.0, 2.0, -1.0, 0.5, 0.0, 3.0], [-0.5, 4.0, 4.0, 4.0, 4.0, 4.0]]
MIXED_COVID = [1.0, 0.0]
MIXED_LESIONS = [[1.0, 0.0, 0.0, 1.0, NAN], [NAN] * 5]
MIXED_UNKNOWN = [[False, False, False, False, False, True], [False, True, True, True, True, True]]


def mixed_expected(covid_weight: float) -> float:
    covid_terms = bce(1.0, 1.0) + bce(-0.5, 0.0)
    lesion_terms = bce(2.0, 1.0) + bce(-1.0, 0.0) + bce(0.5, 0.0) + bce(0.0, 1.0)
    return (covid_weight * covid_terms + lesion_terms) / (covid_weight * 2 + 4)


def mixed_loss(covid_weight: float = 5.0, logits: list | None = None) -> torch.Tensor:
    return ladnn_loss(
        torch.tensor(logits or MIXED_LOGITS),
        torch.tensor(MIXED_COVID),
        torch.tensor(MIXED_LESIONS),
        covid_weight=covid_weight,
    )


def test_loss_zero_logits_is_ln2():
    logits = torch.zeros(2, 6)
    covid = torch.tensor([1.0, 0.0])
    lesions = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [NAN] * 5])

    loss = ladnn_loss(logits, covid, lesions, covid_weight=5.0)

    expected = (5 * LN2 * 2 + 5 * LN2) / (5 * 2 + 5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("covid_weight", [1.0, 5.0, 10.0])
def test_loss_mixed_case_by_hand(covid_weight: float):
    loss = mixed_loss(covid_weight)

    assert loss.item() == pytest.approx(mixed_expected(covid_weight), rel=1e-6)


def test_loss_covid_weight_changes_result():
    light = mixed_loss(1.0).item()
    heavy = mixed_loss(10.0).item()

    assert light != pytest.approx(heavy, rel=1e-3)


def test_loss_ignores_unknown_logits():
    changed = [row[:] for row in MIXED_LOGITS]
    changed[0][5] = -7.0
    changed[1][1:] = [9.0, -9.0, 0.0, 20.0, -20.0]

    assert mixed_loss(logits=changed).item() == pytest.approx(mixed_loss().item(), abs=1e-7)


def test_loss_unknown_gets_zero_gradient():
    logits = torch.tensor(MIXED_LOGITS, requires_grad=True)
    unknown = torch.tensor(MIXED_UNKNOWN)

    ladnn_loss(logits, torch.tensor(MIXED_COVID), torch.tensor(MIXED_LESIONS)).backward()

    assert torch.all(logits.grad[unknown] == 0)
    assert torch.all(logits.grad[~unknown] != 0)


def test_loss_unknown_differs_from_absent():
    absent = torch.nan_to_num(torch.tensor(MIXED_LESIONS), nan=0.0)

    as_absent = ladnn_loss(torch.tensor(MIXED_LOGITS), torch.tensor(MIXED_COVID), absent)

    assert as_absent.item() != pytest.approx(mixed_loss().item(), rel=1e-3)


def test_loss_all_unknown_is_covid_only():
    logits = torch.tensor(MIXED_LOGITS)
    covid = torch.tensor(MIXED_COVID)
    lesions = torch.full((2, 5), NAN)

    loss = ladnn_loss(logits, covid, lesions)

    expected = (bce(1.0, 1.0) + bce(-0.5, 0.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("lesions", [None, MIXED_LESIONS], ids=["no lesions", "lesions given"])
def test_loss_baseline_ignores_lesions(lesions):
    logits = torch.tensor([[1.0], [-0.5]])
    targets = None if lesions is None else torch.tensor(lesions)

    loss = ladnn_loss(logits, torch.tensor(MIXED_COVID), targets)

    expected = (bce(1.0, 1.0) + bce(-0.5, 0.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# (logits shape, COVID targets, lesion targets shape) that do not fit together.
SHAPE_MISMATCHES = {
    "more logit rows": ((3, 6), 2, (2, 5)),
    "fewer logit rows": ((2, 6), 3, (3, 5)),
    "one-dimensional logits": ((6,), 6, (6, 5)),
    "four lesion columns": ((2, 6), 2, (2, 4)),
    "extra lesion rows": ((2, 6), 2, (3, 5)),
}


@pytest.mark.parametrize("case", SHAPE_MISMATCHES)
def test_loss_shape_mismatch_raises(case: str):
    logits_shape, count, lesions_shape = SHAPE_MISMATCHES[case]

    with pytest.raises(ValueError, match="do not match"):
        ladnn_loss(torch.zeros(logits_shape), torch.zeros(count), torch.zeros(lesions_shape))


@pytest.mark.parametrize(("variant", "outputs"), [("ladnn", 6), ("baseline", 1)])
def test_model_output_shape(variant: str, outputs: int):
    torch.manual_seed(0)
    model, loaded = build_model("resnet18", variant, pretrained=False)
    images = torch.randn(3, 3, 64, 64)

    with torch.no_grad():
        logits = model(images)

    assert loaded.pretrained is False
    assert logits.shape == (3, outputs)


def test_model_column_zero_is_covid():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "ladnn", pretrained=False)
    model.eval()
    images = torch.randn(2, 3, 64, 64)

    with torch.no_grad():
        logits = model(images)
        features = model.backbone(images)
        covid = model.covid_head(features)
        lesions = model.lesion_head(features)

    assert len(OUTPUT_NAMES) == 6
    assert OUTPUT_NAMES[0] == "covid"
    assert torch.allclose(logits[:, :1], covid)
    assert torch.allclose(logits[:, 1:], lesions)


def test_model_invalid_variant_raises():
    with pytest.raises(ValueError, match="unknown variant 'attention'"):
        build_model("resnet18", "attention", pretrained=False)
