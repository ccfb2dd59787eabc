"""The steps of one cycle as plain functions: import, check, version, train, register.

The Prefect flow in `pipelines/cycle.py` calls these; tests call them directly.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ladnn.config import LadnnCfg
from ladnn.data.operations import BatchImport, import_batch
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.tracking.registry import register_candidate
from ladnn.tracking.store import configure_mlflow
from ladnn.training.run import TrainingRun
from ladnn.workspace import Workspace, release_dir

__all__ = [
    "data_root",
    "import_release",
    "check_images",
    "register_run",
    "CycleSummary",
    "format_summary",
]

logger = logging.getLogger(__name__)


def data_root(cfg: LadnnCfg) -> Path:
    return Path(cfg.data.root or ".").resolve()


def import_release(cfg: LadnnCfg, workspace: Workspace, *, progress: bool = True) -> BatchImport:
    """Import the COVID-CT release and record the dataset version (reused when unchanged)."""
    source = release_dir(cfg)
    if not source.is_dir():
        raise FileNotFoundError(
            f"COVID-CT release not found at {source}: set data.release (--release) or LADNN_DATASETS"
        )
    items = read_release(source)
    return import_batch(
        data_root(cfg),
        workspace,
        RELEASE_BATCH_ID,
        items,
        progress=progress,
        servers=cfg.servers,
    )


def check_images(store: DatasetStore) -> int:
    """Decode every image the metadata lists; raise naming the files that fail. Return the count."""
    frame = store.read_metadata()
    failures = []
    for image_id in frame["image_id"]:
        path = store.image_path(image_id)
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError) as err:
            failures.append(f"{path}: {err}")
    if failures:
        raise ValueError(
            f"{len(failures)} image(s) in {store.data_dir} do not decode: {failures[:5]}"
        )
    return len(frame)


def _metric_tag(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def register_run(cfg: LadnnCfg, workspace: Workspace, run: TrainingRun) -> str:
    """Register the run's model as a pending candidate; return its version number."""
    configure_mlflow(cfg, workspace)
    test = run.test.metrics
    tags = {
        **run.tags,
        "run_id": run.run_id,
        "pretrained": str(run.pretrained).lower(),
        "threshold": f"{run.threshold:.6f}",
        "test_auc": _metric_tag(test["auc"]),
        "test_auc_ci": f"[{_metric_tag(test['auc_ci_low'])}, {_metric_tag(test['auc_ci_high'])}]",
    }
    for name in ("sensitivity", "specificity", "precision", "f1", "accuracy"):
        tags[f"test_{name}"] = _metric_tag(test[name])
        # Runs evaluated before every metric had an interval carry the AUC's alone.
        if f"{name}_ci_low" in test:
            tags[f"test_{name}_ci"] = (
                f"[{_metric_tag(test[f'{name}_ci_low'])}, {_metric_tag(test[f'{name}_ci_high'])}]"
            )
    version = register_candidate(
        run.model_uri,
        cfg.tracking.registered_model,
        tags,
        description=(
            f"{run.tags['variant']} on {run.tags['backbone']}, dataset {run.dataset_version}, "
            f"test AUC {test['auc']:.3f}"
        ),
    )
    return str(version.version)


@dataclass
class CycleSummary:
    dataset_version: str
    dataset_created: bool
    n_images: int
    images_added: int
    run_id: str
    model_name: str
    model_version: str
    run: TrainingRun
    tracking_uri: str
    # Outcome of the comparison with the champion: None when the review step did not run.
    review: dict | None = None


def _review_lines(summary: CycleSummary) -> list[str]:
    if summary.review is None:
        return []
    against = (
        f"champion v{summary.review['champion']}"
        if summary.review["champion"]
        else "no champion yet"
    )
    if summary.review["gates_passed"]:
        return [
            f"Compared with {against}: gates passed, version {summary.model_version} is the challenger",
            f"  approve: ladnn promote {summary.model_version} --reviewer NAME --reason TEXT",
        ]
    failed = [name for name, passed, _ in summary.review["gates"] if not passed]
    return [f"Compared with {against}: gates failed ({', '.join(failed)}); not proposed"]


def format_summary(summary: CycleSummary) -> str:
    test = summary.run.test.metrics
    val = summary.run.validation.metrics
    state = "new" if summary.dataset_created else "unchanged, reused"
    lines = [
        f"Dataset {summary.dataset_version} ({state}): {summary.n_images} images, "
        f"{summary.images_added} added by this import",
        f"Trained {summary.run.tags['variant']} on {summary.run.tags['backbone']} "
        f"(pretrained: {summary.run.pretrained}) in {summary.run.train_seconds:.0f} s, "
        f"best epoch {summary.run.best_epoch}, validation AUC {val['auc']:.3f}",
        f"Test split of {summary.dataset_version} ({summary.run.test.n_images} images), threshold "
        f"{summary.run.threshold:.3f} frozen on validation:",
        f"  AUC          {test['auc']:.3f}  (95% CI {test['auc_ci_low']:.3f}-{test['auc_ci_high']:.3f})",
        f"  sensitivity  {test['sensitivity']:.3f}",
        f"  specificity  {test['specificity']:.3f}",
        f"  precision    {test['precision']:.3f}",
        f"  F1           {test['f1']:.3f}",
        f"  accuracy     {test['accuracy']:.3f}",
        f"Registered model {summary.model_name} version {summary.model_version} "
        f"(review state: pending), MLflow run {summary.run_id}",
        *_review_lines(summary),
        "Next:",
        f"  {_program('mlflow')} ui --backend-store-uri {summary.tracking_uri}",
        f"  {_program('ladnn')} models          # list registered versions",
        f"  {_program('ladnn')} data versions   # list dataset versions",
    ]
    return "\n".join(lines)


def _program(name: str) -> str:
    """`name` when the shell finds this environment's program by it, else the program's path."""
    installed = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == installed.resolve():
        return name
    return str(installed)
