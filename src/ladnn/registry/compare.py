"""Compare a candidate with the champion on the same frozen test images, and apply the gates.

Both models are scored in one evaluation on the test images that neither trained on: the test split
of the current dataset, minus any image in the training split of either model's dataset version.
Differences are paired (candidate minus champion on the same images), with a bootstrap over
patients for their intervals and DeLong's test for the AUCs.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ladnn.config import GatesCfg
from ladnn.data.store import DatasetStore
from ladnn.evaluation.delong import delong_test
from ladnn.evaluation.metrics import (
    confidence_interval,
    resample_weights,
    roc_auc,
    threshold_metrics,
    weighted_auc,
    weighted_threshold_metrics,
)
from ladnn.registry.loading import LoadedVersion, score_frame

__all__ = [
    "GateResult",
    "ComparisonReport",
    "compare_loaded",
    "apply_gates",
    "render_markdown",
    "slice_table",
]

logger = logging.getLogger(__name__)

_METRICS = ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy")
# Metrics of each slice of the test images (per batch, source and negative subtype).
_SLICE_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
# Sources with fewer test images share one slice.
MIN_SOURCE_IMAGES = 10


@dataclass
class GateResult:
    name: str
    passed: bool
    detail: str


@dataclass
class ComparisonReport:
    model_name: str
    candidate: str
    champion: str | None
    n_images: int
    n_patients: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    differences: dict[str, dict[str, float]] = field(default_factory=dict)
    delong: dict[str, float] | None = None
    per_batch: list[dict] = field(default_factory=list)
    per_source: list[dict] = field(default_factory=list)
    # All COVID images against the negatives of one subtype per row.
    per_subtype: list[dict] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)

    @property
    def gates_passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _metric_values(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    values = threshold_metrics(y, p, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values["auc"] = roc_auc(y, p)
    return {name: values[name] for name in _METRICS}


def _bootstrap(
    y: np.ndarray,
    probabilities: dict[str, np.ndarray],
    thresholds: dict[str, float],
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
) -> dict[str, dict[str, tuple[float, float]]]:
    """95% intervals of each model's metrics and, with two models, of the candidate-minus-champion
    differences, from one bootstrap over whole patients (keys: the roles and "difference").

    Resamples that contain one class only are left out for every metric."""
    weights = resample_weights(len(y), groups, n_resamples, seed)
    positives = weights @ (y == 1)
    weights = weights[(positives > 0) & (positives < weights.sum(axis=1))]
    values: dict[str, dict[str, np.ndarray]] = {}
    for role, p in probabilities.items():
        values[role] = weighted_threshold_metrics(y, p, thresholds[role], weights)
        values[role]["auc"] = weighted_auc(y, p, weights)
    if len(probabilities) == 2:
        values["difference"] = {
            name: values["candidate"][name] - values["champion"][name] for name in _METRICS
        }
    return {
        key: {name: confidence_interval(by_metric[name]) for name in _METRICS}
        for key, by_metric in values.items()
    }


def _slice_row(
    part: pd.DataFrame,
    probabilities: dict[str, np.ndarray],
    thresholds: dict[str, float],
    n_resamples: int,
    seed: int,
) -> dict:
    """Metrics of one slice for each model with 95% intervals, the paired differences and, when
    the slice has both classes, DeLong's p-value for the AUCs."""
    index = part.index.to_numpy()
    y = part["label"].to_numpy(dtype=int)
    scores = {role: p[index] for role, p in probabilities.items()}
    row: dict = {"n": len(part), "positives": int(y.sum())}
    both_classes = len(np.unique(y)) == 2
    intervals = _bootstrap(
        y, scores, thresholds, part["patient_id"].astype(str).to_numpy(), n_resamples, seed
    )
    values = {}
    for role, p in scores.items():
        metrics = threshold_metrics(y, p, thresholds[role])
        metrics["auc"] = float(roc_auc_score(y, p)) if both_classes else math.nan
        values[role] = metrics
        for name in _SLICE_METRICS:
            low, high = intervals[role][name] if both_classes else (math.nan, math.nan)
            row[f"{role}_{name}"] = metrics[name]
            row[f"{role}_{name}_ci_low"] = low
            row[f"{role}_{name}_ci_high"] = high
    if "champion" in scores:
        for name in _SLICE_METRICS:
            low, high = intervals["difference"][name] if both_classes else (math.nan, math.nan)
            row[f"{name}_difference"] = values["candidate"][name] - values["champion"][name]
            row[f"{name}_difference_ci_low"] = low
            row[f"{name}_difference_ci_high"] = high
        row["delong_p"] = (
            delong_test(y, scores["candidate"], scores["champion"]).p_value
            if both_classes
            else math.nan
        )
    return row


def _slice_rows(
    frame: pd.DataFrame,
    column: str,
    probabilities: dict[str, np.ndarray],
    thresholds: dict[str, float],
    n_resamples: int,
    seed: int,
    *,
    negatives_only: bool = False,
    min_images: int = 0,
) -> list[dict]:
    """One row per value of `column`; values with fewer than `min_images` images share one row,
    "other". With `negatives_only`, the column sorts the negatives and each slice contains all
    positives with the negatives of one value, as in "COVID against nodule"."""
    sorted_rows = frame[frame["label"] == 0] if negatives_only else frame
    values = sorted_rows[column].astype("string").fillna("unknown")
    counts = values.value_counts()
    small = set(counts[counts < min_images].index)
    names = values.where(~values.isin(small), "other")
    rows = []
    for name in pd.unique(names):
        members = names.index[names == name]
        if negatives_only:
            members = frame.index[frame["label"] == 1].union(members)
        row = {column: name}
        if name == "other":
            row[column] = f"other ({len(small)} values under {min_images} images)"
        row |= _slice_row(frame.loc[members], probabilities, thresholds, n_resamples, seed)
        rows.append(row)
    return rows


def apply_gates(report: ComparisonReport, gates: GatesCfg) -> list[GateResult]:
    results = []
    sensitivity = report.metrics["candidate"]["sensitivity"]
    results.append(
        GateResult(
            "min_sensitivity",
            bool(sensitivity >= gates.min_sensitivity),
            f"sensitivity {sensitivity:.3f} (floor {gates.min_sensitivity:.3f})",
        )
    )
    if report.champion is not None:
        drop = -report.differences["auc"]["difference"]
        results.append(
            GateResult(
                "max_auc_drop",
                bool(drop <= gates.max_auc_drop),
                f"AUC change {-drop:+.3f} against champion {report.champion} "
                f"(largest drop allowed {gates.max_auc_drop:.3f})",
            )
        )
        for row in report.per_batch:
            change = row.get("auc_difference", math.nan)
            if math.isnan(change):
                continue
            results.append(
                GateResult(
                    f"batch_auc:{row['batch_id']}",
                    bool(-change <= gates.max_batch_auc_drop),
                    f"batch {row['batch_id']} AUC change {change:+.3f} "
                    f"(largest drop allowed {gates.max_batch_auc_drop:.3f})",
                )
            )
    return results


def compare_loaded(
    candidate: LoadedVersion,
    champion: LoadedVersion | None,
    store: DatasetStore,
    frame: pd.DataFrame,
    cache_dir: Path,
    gates: GatesCfg,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> ComparisonReport:
    """Score both models on `frame` (the frozen test images) and build the paired report."""
    frame = frame.reset_index(drop=True)
    y = frame["label"].to_numpy(dtype=int)
    groups = frame["patient_id"].astype(str).to_numpy()
    roles = {"candidate": candidate} | ({"champion": champion} if champion is not None else {})
    probabilities = {
        role: score_frame(loaded, store, frame, cache_dir)[:, 0] for role, loaded in roles.items()
    }
    thresholds = {role: loaded.threshold for role, loaded in roles.items()}

    report = ComparisonReport(
        model_name=candidate.name,
        candidate=candidate.version,
        champion=champion.version if champion is not None else None,
        n_images=len(frame),
        n_patients=len(np.unique(groups)),
    )
    intervals = _bootstrap(y, probabilities, thresholds, groups, n_resamples, seed)
    for role, p in probabilities.items():
        values = _metric_values(y, p, thresholds[role])
        report.metrics[role] = values | {"threshold": thresholds[role]}
        # The same patient resamples as `auc_with_ci`, so the AUC interval equals an evaluation's.
        for name in _METRICS:
            low, high = intervals[role][name]
            report.metrics[role][f"{name}_ci_low"] = low
            report.metrics[role][f"{name}_ci_high"] = high

    if champion is not None:
        for name in _METRICS:
            report.differences[name] = {
                "difference": report.metrics["candidate"][name] - report.metrics["champion"][name],
                "ci_low": intervals["difference"][name][0],
                "ci_high": intervals["difference"][name][1],
            }
        result = delong_test(y, probabilities["candidate"], probabilities["champion"])
        report.delong = {
            "z": result.z,
            "p_value": result.p_value,
            "standard_error": result.standard_error,
        }

    slices = (probabilities, thresholds, n_resamples, seed)
    report.per_batch = _slice_rows(frame, "batch_id", *slices)
    report.per_source = _slice_rows(frame, "source", *slices, min_images=MIN_SOURCE_IMAGES)
    report.per_subtype = _slice_rows(frame, "negative_subtype", *slices, negatives_only=True)
    report.gates = apply_gates(report, gates)
    return report


def _format(value: float) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _with_interval(row: dict, key: str) -> str:
    """Format `row[key]` with its 95% interval, when the row has one."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:+.3f}" if key.endswith("_difference") else f"{value:.3f}"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} ({low:.3f} to {high:.3f})"


def slice_table(rows: list[dict]) -> pd.DataFrame:
    """Format the rows of one slice list (per batch, source or subtype) for reading: each metric
    with its 95% interval, the paired differences and DeLong's p-value."""
    table = []
    for row in rows:
        column = next(iter(row))
        item = {column: row[column], "images": row["n"], "COVID": row["positives"]}
        for role in ("candidate", "champion"):
            for name in _SLICE_METRICS:
                if f"{role}_{name}" in row:
                    item[f"{role} {name}"] = _with_interval(row, f"{role}_{name}")
        for name in ("auc", "accuracy"):
            if f"{name}_difference" in row:
                item[f"{name} difference"] = _with_interval(row, f"{name}_difference")
        if "delong_p" in row:
            item["DeLong p"] = _format(row["delong_p"])
        table.append(item)
    return pd.DataFrame(table)


def render_markdown(report: ComparisonReport) -> str:
    """Render the report as Markdown: metrics side by side, paired differences, DeLong, batches, gates."""
    champion = report.champion
    lines = [
        f"# {report.model_name}: candidate v{report.candidate} against "
        + (f"champion v{champion}" if champion else "no champion"),
        "",
        f"{report.n_images} frozen test images from {report.n_patients} patients, none in either model's training split.",
        "",
    ]
    header = (
        "| metric | candidate | champion | difference (95% CI) |"
        if champion
        else "| metric | candidate |"
    )
    lines += [header, "|---|---|---|---|" if champion else "|---|---|"]
    for name in _METRICS:
        cell = _with_interval(report.metrics["candidate"], name)
        if champion:
            champion_cell = _with_interval(report.metrics["champion"], name)
            diff = report.differences[name]
            lines.append(
                f"| {name} | {cell} | {champion_cell} | {_signed(diff['difference'])} "
                f"({_format(diff['ci_low'])} to {_format(diff['ci_high'])}) |"
            )
        else:
            lines.append(f"| {name} | {cell} |")
    if report.delong:
        lines += [
            "",
            f"DeLong test for the AUCs: z = {report.delong['z']:.2f}, p = {report.delong['p_value']:.4f}",
        ]
    for title, rows in (
        ("Per batch", report.per_batch),
        ("Per source (sources under 10 test images together)", report.per_source),
        ("COVID against each negative subtype", report.per_subtype),
    ):
        lines += ["", f"## {title}", "", slice_table(rows).to_markdown(index=False)]
    lines += ["", "## Gates", ""]
    for gate in report.gates:
        lines.append(f"- {'PASS' if gate.passed else 'FAIL'} `{gate.name}`: {gate.detail}")
    return "\n".join(lines) + "\n"
