"""The backbone table of the LA-DNN paper (Liu, Gao, He, Lv and Yin 2020, medRxiv
10.1101/2020.05.11.20097907; its Table 2 layout), built from logged child runs.

Rows are sensitivity, AUC, F1 and accuracy per backbone; the baseline and LA-DNN sit side by side,
each value with its 95% confidence interval, and the AUC row carries DeLong's p-value of LA-DNN
against the baseline on the same test images. The published numbers go in two more columns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "TABLE_METRICS",
    "VARIANTS",
    "PAPER_NUMBERS",
    "PAPER_NOT_AVAILABLE",
    "MetricCell",
    "VariantResult",
    "BackboneRow",
    "BackboneTable",
    "render_markdown",
    "table_from_dict",
]

# Metrics of the table in the row order of that Table 2, as (MLflow metric suffix, row label).
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("sensitivity", "Sensitivity"),
    ("auc", "AUC"),
    ("f1", "F1"),
    ("accuracy", "Accuracy"),
)
VARIANTS = ("baseline", "ladnn")
VARIANT_LABELS = {"baseline": "Baseline", "ladnn": "LA-DNN"}

# The paper's Table 2 in percent, as {backbone: {variant: {metric: value}}}.
# NOTE: empty because the table of Liu et al. (2020, medRxiv 10.1101/2020.05.11.20097907) could
# not be read offline; fill it from the paper, with the version of the preprint it comes from.
PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {}
PAPER_NOT_AVAILABLE = "not available offline"

BACKBONE_LABELS = {
    "vgg16": "VGG-16",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "densenet121": "DenseNet-121",
    "densenet169": "DenseNet-169",
    "efficientnet_b0": "EfficientNet-b0",
    "efficientnet_b1": "EfficientNet-b1",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
}


@dataclass(frozen=True)
class MetricCell:
    """One metric of one child run on the test split, with its patient-bootstrap 95% interval."""

    value: float
    ci_low: float
    ci_high: float


@dataclass
class VariantResult:
    """The outcome of one (backbone, variant) child run; `error` is set when training failed."""

    variant: str
    run_id: str | None = None
    pretrained: bool | None = None
    weights_source: str = ""
    threshold: float = math.nan
    metrics: dict[str, MetricCell] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BackboneRow:
    backbone: str
    in_paper: bool
    variants: dict[str, VariantResult]
    # DeLong's test of LA-DNN against the baseline: p-value, AUC difference and z.
    delong_p_value: float = math.nan
    auc_difference: float = math.nan
    delong_z: float = math.nan

    @property
    def pretrained(self) -> bool | None:
        """True when every trained variant started from ImageNet weights, None when none trained."""
        flags = [v.pretrained for v in self.variants.values() if v.pretrained is not None]
        return all(flags) if flags else None


@dataclass
class BackboneTable:
    parent_run_id: str
    dataset_version: str
    profile: str
    image_size: int
    epochs: int
    test_images: int
    threshold_rule: str
    rows: list[BackboneRow]
    paper_source: str = PAPER_NOT_AVAILABLE

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-safe values: NaN becomes None."""
        return _without_nan(asdict(self))


def _without_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def table_from_dict(values: dict[str, Any]) -> BackboneTable:
    """Rebuild a table from `BackboneTable.to_dict()` output (for example the logged JSON)."""
    rows = []
    for row in values["rows"]:
        variants = {}
        for name, result in row["variants"].items():
            metrics = {
                metric: MetricCell(_nan(cell["value"]), _nan(cell["ci_low"]), _nan(cell["ci_high"]))
                for metric, cell in result["metrics"].items()
            }
            variants[name] = VariantResult(
                variant=result["variant"],
                run_id=result["run_id"],
                pretrained=result["pretrained"],
                weights_source=result["weights_source"],
                threshold=_nan(result["threshold"]),
                metrics=metrics,
                error=result["error"],
            )
        rows.append(
            BackboneRow(
                backbone=row["backbone"],
                in_paper=row["in_paper"],
                variants=variants,
                delong_p_value=_nan(row["delong_p_value"]),
                auc_difference=_nan(row["auc_difference"]),
                delong_z=_nan(row["delong_z"]),
            )
        )
    fields = {key: values[key] for key in values if key != "rows"}
    return BackboneTable(rows=rows, **fields)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _format_cell(result: VariantResult | None, metric: str) -> str:
    if result is None:
        return "not run"
    if result.error is not None:
        return "failed"
    cell = result.metrics.get(metric)
    if cell is None:
        return "n/a"
    return f"{_percent(cell.value)} ({_percent(cell.ci_low)}-{_percent(cell.ci_high)})"


def _format_p_value(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _paper_cell(backbone: str, variant: str, metric: str) -> str:
    value = PAPER_NUMBERS.get(backbone, {}).get(variant, {}).get(metric)
    if value is not None:
        return f"{value:.1f}"
    if PAPER_NUMBERS:
        return "-"
    return PAPER_NOT_AVAILABLE


def _backbone_label(row: BackboneRow) -> str:
    label = BACKBONE_LABELS.get(row.backbone, row.backbone)
    if row.pretrained is False:
        label += " †"
    if not row.in_paper:
        label += " ‡"
    return label


def render_markdown(table: BackboneTable) -> str:
    """Render the table as GitHub-flavoured Markdown, values in percent with 95% intervals."""
    header = (
        "| Backbone | Metric | Baseline (95% CI) | LA-DNN (95% CI) | DeLong p | "
        "Paper baseline | Paper LA-DNN |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in table.rows:
        for index, (metric, label) in enumerate(TABLE_METRICS):
            backbone = _backbone_label(row) if index == 0 else ""
            p_value = _format_p_value(row.delong_p_value) if metric == "auc" else ""
            cells = [
                backbone,
                label,
                _format_cell(row.variants.get("baseline"), metric),
                _format_cell(row.variants.get("ladnn"), metric),
                p_value,
                _paper_cell(row.backbone, "baseline", metric),
                _paper_cell(row.backbone, "ladnn", metric),
            ]
            lines.append("| " + " | ".join(cells) + " |")

    notes = [
        f"Dataset version {table.dataset_version}, official test split ({table.test_images} "
        f"images); profile `{table.profile}`: {table.image_size} px, {table.epochs} "
        f"{'epoch' if table.epochs == 1 else 'epochs'}. "
        "Values in percent; intervals are 95% patient-bootstrap intervals. "
        f"Sensitivity, F1 and accuracy use the threshold chosen by rule `{table.threshold_rule}` "
        "on the validation split.",
        "DeLong p: two-sided DeLong test of LA-DNN against the baseline AUC on the same test "
        "images.",
        "† trained from random weights: no ImageNet weights were available offline.",
        "‡ not among the paper's backbones.",
        f"Paper columns: {table.paper_source}.",
        f"MLflow parent run: `{table.parent_run_id}`.",
    ]
    failed = [
        f"{row.backbone}:{result.variant}: {result.error}"
        for row in table.rows
        for result in row.variants.values()
        if result.error is not None
    ]
    if failed:
        notes.append("Failed runs: " + "; ".join(failed) + ".")
    return "\n".join([*lines, "", *(f"- {note}" for note in notes)]) + "\n"
