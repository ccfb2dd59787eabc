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
from ladnn.evaluation.metrics import auc_with_ci, roc_auc, threshold_metrics
from ladnn.registry.loading import LoadedVersion, score_frame

__all__ = ["GateResult", "ComparisonReport", "compare_loaded", "apply_gates", "render_markdown"]

logger = logging.getLogger(__name__)

_METRICS = ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy")


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


def _paired_bootstrap(
    y: np.ndarray,
    p_candidate: np.ndarray,
    p_champion: np.ndarray,
    thresholds: tuple[float, float],
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """95% intervals of candidate-minus-champion differences, resampling whole patients."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in _METRICS}
    for _ in range(n_resamples):
        index = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
        if len(np.unique(y[index])) < 2:
            continue
        first = _metric_values(y[index], p_candidate[index], thresholds[0])
        second = _metric_values(y[index], p_champion[index], thresholds[1])
        for name in _METRICS:
            difference = first[name] - second[name]
            if not math.isnan(difference):
                samples[name].append(difference)
    return {
        name: tuple(np.quantile(values, [0.025, 0.975]).tolist())
        if values
        else (math.nan, math.nan)
        for name, values in samples.items()
    }


def _slice_rows(
    frame: pd.DataFrame,
    column: str,
    probabilities: dict[str, np.ndarray],
    thresholds: dict[str, float],
) -> list[dict]:
    rows = []
    for value, part in frame.groupby(column, dropna=False):
        index = part.index.to_numpy()
        y = part["label"].to_numpy(dtype=int)
        row = {
            column: "unknown" if pd.isna(value) else str(value),
            "n": len(part),
            "positives": int(y.sum()),
        }
        for role, p in probabilities.items():
            metrics = threshold_metrics(y, p[index], thresholds[role])
            row[f"{role}_auc"] = (
                float(roc_auc_score(y, p[index])) if len(np.unique(y)) == 2 else math.nan
            )
            row[f"{role}_sensitivity"] = metrics["sensitivity"]
            row[f"{role}_specificity"] = metrics["specificity"]
            row[f"{role}_accuracy"] = metrics["accuracy"]
        if "champion" in probabilities:
            row["auc_difference"] = row["candidate_auc"] - row["champion_auc"]
            row["accuracy_difference"] = row["candidate_accuracy"] - row["champion_accuracy"]
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
    for role, p in probabilities.items():
        values = _metric_values(y, p, thresholds[role])
        auc, low, high = auc_with_ci(y, p, groups, n_resamples=n_resamples, seed=seed)
        report.metrics[role] = values | {
            "auc_ci_low": low,
            "auc_ci_high": high,
            "threshold": thresholds[role],
        }

    if champion is not None:
        intervals = _paired_bootstrap(
            y,
            probabilities["candidate"],
            probabilities["champion"],
            (thresholds["candidate"], thresholds["champion"]),
            groups,
            n_resamples,
            seed,
        )
        for name in _METRICS:
            report.differences[name] = {
                "difference": report.metrics["candidate"][name] - report.metrics["champion"][name],
                "ci_low": intervals[name][0],
                "ci_high": intervals[name][1],
            }
        result = delong_test(y, probabilities["candidate"], probabilities["champion"])
        report.delong = {
            "z": result.z,
            "p_value": result.p_value,
            "standard_error": result.standard_error,
        }

    report.per_batch = _slice_rows(frame, "batch_id", probabilities, thresholds)
    report.per_source = _slice_rows(frame, "negative_subtype", probabilities, thresholds)
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
        cand = report.metrics["candidate"]
        cell = _format(cand[name])
        if name == "auc":
            cell += f" ({_format(cand['auc_ci_low'])}-{_format(cand['auc_ci_high'])})"
        if champion:
            champ = report.metrics["champion"]
            champ_cell = _format(champ[name])
            if name == "auc":
                champ_cell += f" ({_format(champ['auc_ci_low'])}-{_format(champ['auc_ci_high'])})"
            diff = report.differences[name]
            lines.append(
                f"| {name} | {cell} | {champ_cell} | {_signed(diff['difference'])} "
                f"({_format(diff['ci_low'])} to {_format(diff['ci_high'])}) |"
            )
        else:
            lines.append(f"| {name} | {cell} |")
    if report.delong:
        lines += [
            "",
            f"DeLong test for the AUCs: z = {report.delong['z']:.2f}, p = {report.delong['p_value']:.4f}",
        ]
    lines += [
        "",
        "## Per batch",
        "",
        pd.DataFrame(report.per_batch).round(3).to_markdown(index=False),
    ]
    lines += [
        "",
        "## Per negative subtype",
        "",
        pd.DataFrame(report.per_source).round(3).to_markdown(index=False),
    ]
    lines += ["", "## Gates", ""]
    for gate in report.gates:
        lines.append(f"- {'PASS' if gate.passed else 'FAIL'} `{gate.name}`: {gate.detail}")
    return "\n".join(lines) + "\n"
