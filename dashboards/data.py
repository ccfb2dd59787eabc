"""Read what the dashboard shows from the stores the CLI uses, as plain data without Streamlit.

The registry (models, aliases, audit log) comes from MLflow through `ladnn.registry.workflow`,
the dataset versions from `<workspace>/datasets/versions.json`, validation results from
`<workspace>/validation/` and the quarantine from `<workspace>/quarantine/`.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ladnn.data.lesions import LESIONS
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.registry.compare import slice_table
from ladnn.registry.review import Registry
from ladnn.validation.quarantine import list_quarantine
from ladnn.validation.results import list_results
from ladnn.workspace import Workspace

__all__ = [
    "VersionSummary",
    "version_summary",
    "model_versions_frame",
    "dataset_growth",
    "growth_long",
    "load_comparison",
    "comparison_metrics_frame",
    "slice_frame",
    "data_docs_zip",
    "audit_frame",
    "validation_frame",
    "quarantine_frame",
    "gallery_frame",
    "runs_frame",
    "epoch_history",
    "display_frame",
]

# Per-epoch metrics logged by training at steps 1, 2, ...
EPOCH_METRICS = ("epoch_train_loss", "epoch_val_auc", "epoch_lr", "epoch_train_images_per_s")


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _interval(text: str | None) -> tuple[float, float]:
    """Parse a `[low, high]` tag written by `ladnn.cycle.register_run`."""
    if not text:
        return math.nan, math.nan
    parts = text.strip("[] ").split(",")
    if len(parts) != 2:
        return math.nan, math.nan
    return _number(parts[0].strip()), _number(parts[1].strip())


@dataclass(frozen=True)
class VersionSummary:
    version: str
    aliases: tuple[str, ...]
    review_state: str
    gate_state: str
    dataset_version: str
    backbone: str
    variant: str
    run_id: str
    created_at: str
    test_auc: float
    test_auc_ci: tuple[float, float]
    sensitivity: float
    specificity: float
    tags: dict[str, str]


def version_summary(client: MlflowClient, name: str, version: str) -> VersionSummary:
    """Summarise a registered version from its tags, falling back to its run's test metrics."""
    model_version = client.get_model_version(name, str(version))
    tags = dict(model_version.tags)
    auc = _number(tags.get("test_auc"))
    ci = _interval(tags.get("test_auc_ci"))
    sensitivity = _number(tags.get("test_sensitivity"))
    specificity = _number(tags.get("test_specificity"))
    if any(math.isnan(value) for value in (auc, *ci, sensitivity, specificity)):
        try:
            metrics = client.get_run(model_version.run_id).data.metrics
        except MlflowException:
            metrics = {}
        auc = metrics.get("test_auc", auc)
        ci = (metrics.get("test_auc_ci_low", ci[0]), metrics.get("test_auc_ci_high", ci[1]))
        sensitivity = metrics.get("test_sensitivity", sensitivity)
        specificity = metrics.get("test_specificity", specificity)
    created = datetime.fromtimestamp(model_version.creation_timestamp / 1000, UTC)
    return VersionSummary(
        version=str(model_version.version),
        aliases=tuple(model_version.aliases or ()),
        review_state=tags.get("review_state", ""),
        gate_state=tags.get("gate_state", "not compared"),
        dataset_version=tags.get("dataset_version", ""),
        backbone=tags.get("backbone", ""),
        variant=tags.get("variant", ""),
        run_id=model_version.run_id or "",
        created_at=created.strftime("%Y-%m-%d %H:%M"),
        test_auc=auc,
        test_auc_ci=ci,
        sensitivity=sensitivity,
        specificity=specificity,
        tags=tags,
    )


def model_versions_frame(registry: Registry) -> pd.DataFrame:
    """List the registered versions, newest first, with the columns of `ladnn models`."""
    versions = registry.client.search_model_versions(f"name = '{registry.name}'")
    rows = []
    for item in sorted(versions, key=lambda v: int(v.version), reverse=True):
        summary = version_summary(registry.client, registry.name, item.version)
        rows.append(
            {
                "version": summary.version,
                "aliases": ", ".join(summary.aliases),
                "review": summary.review_state,
                "gates": summary.gate_state,
                "dataset": summary.dataset_version,
                "backbone": summary.backbone,
                "variant": summary.variant,
                "test AUC": summary.test_auc,
                "AUC 95% CI": _format_interval(summary.test_auc_ci),
                "sensitivity": summary.sensitivity,
                "specificity": summary.specificity,
                "created (UTC)": summary.created_at,
            }
        )
    return pd.DataFrame(rows)


def _format_interval(interval: tuple[float | None, float | None]) -> str:
    low, high = interval
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"{low:.3f} to {high:.3f}"


def dataset_growth(workspace: Workspace) -> pd.DataFrame:
    """Count the images per label and split of every dataset version, oldest first."""
    rows = []
    for version in list_versions(workspace):
        counts = version.counts
        rows.append(
            {
                "version": version.name,
                "created": version.created_at[:10],
                "images": version.n_images,
                "COVID": counts.get("label_1", 0),
                "negative": counts.get("label_0", 0),
                "train": counts.get("split_train", 0),
                "val": counts.get("split_val", 0),
                "test": counts.get("split_test", 0),
                "added by": version.notes.get("added_by_batch", ""),
            }
        )
    return pd.DataFrame(rows)


def growth_long(growth: pd.DataFrame, columns: list[str], group: str) -> pd.DataFrame:
    """Reshape `dataset_growth` columns to (version, `group`, images) rows for a stacked chart."""
    if growth.empty:
        return pd.DataFrame(columns=["version", group, "images"])
    subset = growth[["version", *columns]]
    return subset.melt(id_vars=["version"], value_vars=columns, var_name=group, value_name="images")


def load_comparison(client: MlflowClient, name: str, version: str) -> dict | None:
    """Load the comparison report at a version's `comparison_uri` tag; None when it has none."""
    uri = client.get_model_version(name, str(version)).tags.get("comparison_uri")
    if not uri:
        return None
    return json.loads(mlflow.artifacts.load_text(uri))


def comparison_metrics_frame(report: dict) -> pd.DataFrame:
    """Tabulate both models' metrics side by side with their intervals and paired differences."""
    candidate = report["metrics"]["candidate"]
    champion = report["metrics"].get("champion")
    rows = []
    for metric in ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy"):
        row = {"metric": metric, "candidate": candidate[metric]}
        # Reports written before every metric had an interval carry the AUC's alone.
        row["candidate 95% CI"] = _format_interval(
            (candidate.get(f"{metric}_ci_low"), candidate.get(f"{metric}_ci_high"))
        )
        if champion is not None:
            row["champion"] = champion[metric]
            row["champion 95% CI"] = _format_interval(
                (champion.get(f"{metric}_ci_low"), champion.get(f"{metric}_ci_high"))
            )
            difference = report["differences"][metric]
            row["difference"] = difference["difference"]
            row["difference 95% CI"] = _format_interval(
                (difference["ci_low"], difference["ci_high"])
            )
        rows.append(row)
    return pd.DataFrame(rows)


def slice_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a per-batch, per-source or per-subtype table of the report with a `regression` column.

    A row regresses when the candidate's AUC or accuracy on it is below the champion's.
    """
    frame = slice_table(rows)
    if frame.empty:
        return frame
    raw = pd.DataFrame(rows)
    differences = [c for c in ("auc_difference", "accuracy_difference") if c in raw.columns]
    if differences:
        frame["regression"] = (raw[differences].fillna(0) < 0).any(axis=1).to_numpy()
    return frame


def audit_frame(registry: Registry) -> pd.DataFrame:
    """List the audit events of the registered model, newest first."""
    rows = [
        {
            "#": event.seq,
            "when (UTC)": event.created_at,
            "action": event.action + (" (override)" if event.details.get("override") else ""),
            "from": event.from_version or "-",
            "to": event.to_version or "-",
            "reviewer": event.reviewer,
            "reason": event.reason,
            "comparison": event.comparison or "-",
        }
        for event in registry.audit.events(registry.name)
    ]
    return pd.DataFrame(rows).iloc[::-1].reset_index(drop=True) if rows else pd.DataFrame(rows)


def validation_frame(workspace: Workspace) -> pd.DataFrame:
    """List the stored data-validation results, newest first, with the path of their Data Docs."""
    rows = []
    for result in reversed(list_results(workspace.validation_dir)):
        docs = result.docs_path
        rows.append(
            {
                "validation id": result.validation_id,
                "batch": result.batch_id,
                "created": result.created_at,
                "mode": result.mode,
                "passed": result.success,
                "validated": result.counts.get("validated", 0),
                "accepted": result.counts.get("accepted", 0),
                "rejected": result.counts.get("rejected", 0),
                "warnings": len(result.warnings),
                "Data Docs": str(docs) if docs is not None and docs.is_file() else "",
                "summary": result.summary(),
            }
        )
    return pd.DataFrame(rows)


def data_docs_zip(index: str | Path) -> bytes:
    """Zip the Data Docs site whose front page is `index`, so a browser elsewhere can open it."""
    site = Path(index).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(site.rglob("*")):
            if path.is_file():
                archive.write(path, f"{site.parent.name}/{path.relative_to(site)}")
    return buffer.getvalue()


def quarantine_frame(workspace: Workspace) -> pd.DataFrame:
    """List the quarantined files that are not released, with their reasons."""
    rows = [
        {
            "entry": entry.entry_id,
            "file": entry.file_name,
            "batch": entry.batch_id,
            "reasons": "; ".join(
                f"{reason.get('expectation', '')}: {reason.get('detail', '')}"
                for reason in entry.reasons
            ),
            "quarantined at": entry.record.get("quarantined_at", ""),
            "path": str(entry.path),
        }
        for entry in list_quarantine(workspace.quarantine_dir)
    ]
    return pd.DataFrame(rows)


def gallery_frame(
    store: DatasetStore,
    *,
    labels: list[int] | None = None,
    lesion: str | None = None,
    splits: list[str] | None = None,
    batches: list[str] | None = None,
) -> pd.DataFrame:
    """Select the rows of the current dataset that match the filters.

    `lesion` keeps the rows where that lesion is marked present.
    """
    frame = store.read_metadata()
    if labels:
        frame = frame[frame["label"].isin(labels)]
    if lesion:
        if lesion not in LESIONS:
            raise ValueError(f"unknown lesion {lesion!r}: expected one of {list(LESIONS)}")
        frame = frame[frame[lesion].fillna(0) == 1]
    if splits:
        frame = frame[frame["split"].isin(splits)]
    if batches:
        frame = frame[frame["batch_id"].isin(batches)]
    return frame.reset_index(drop=True)


def runs_frame(
    client: MlflowClient,
    experiment_name: str,
    *,
    backbones: list[str] | None = None,
    variants: list[str] | None = None,
) -> pd.DataFrame:
    """List the training runs of the experiment, newest first, optionally filtered by tags."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame()
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if backbones and tags.get("backbone") not in backbones:
            continue
        if variants and tags.get("variant") not in variants:
            continue
        started = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
        rows.append(
            {
                "run id": run.info.run_id,
                "name": run.info.run_name,
                "status": run.info.status,
                "started (UTC)": started.strftime("%Y-%m-%d %H:%M"),
                "backbone": tags.get("backbone", ""),
                "variant": tags.get("variant", ""),
                "dataset": tags.get("dataset_version", ""),
                "val AUC": metrics.get("val_auc", math.nan),
                "test AUC": metrics.get("test_auc", math.nan),
                "test sensitivity": metrics.get("test_sensitivity", math.nan),
                "test specificity": metrics.get("test_specificity", math.nan),
                "best epoch": metrics.get("best_epoch", math.nan),
            }
        )
    return pd.DataFrame(rows)


def epoch_history(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """Return the per-epoch metrics of a run as (epoch, metric, value) rows."""
    rows = []
    for key in EPOCH_METRICS:
        for metric in client.get_metric_history(run_id, key):
            if metric.step >= 1:
                rows.append({"epoch": metric.step, "metric": key, "value": metric.value})
    frame = pd.DataFrame(rows, columns=["epoch", "metric", "value"])
    return frame.sort_values(["metric", "epoch"]).reset_index(drop=True)


def display_frame(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Format float columns as text with `digits` decimals, and missing values as "n/a".

    Streamlit shows a missing value as "None", which reads like a Python error in a report.
    """
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = [
                "n/a" if pd.isna(value) else f"{value:.{digits}f}" for value in shown[column]
            ]
        elif shown[column].isna().any():
            shown[column] = shown[column].astype(object).where(shown[column].notna(), "n/a")
    return shown
