"""The steps of `ladnn reproduce` as plain functions: one MLflow parent run, a nested child run per
(backbone, variant), and the backbone table built from what the child runs logged.

The Prefect flow in `pipelines/reproduce.py` calls these; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ladnn.config import LadnnCfg, config_to_dict
from ladnn.data.operations import read_version_metadata
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DatasetVersion
from ladnn.evaluation.delong import DelongResult, delong_test
from ladnn.evaluation.metrics import bootstrap_ci, threshold_metrics
from ladnn.models.backbones import BACKBONES
from ladnn.reproduce.table import (
    TABLE_METRICS,
    VARIANTS,
    BackboneRow,
    BackboneTable,
    MetricCell,
    VariantResult,
    render_markdown,
)
from ladnn.tracking.redact import redact_secrets
from ladnn.tracking.registry import git_commit
from ladnn.tracking.store import configure_mlflow, mlflow_client, tracking_uri_for
from ladnn.training.images import ImageCache
from ladnn.training.run import flatten_config, run_training
from ladnn.training.trainer import select_device
from ladnn.workspace import Workspace

__all__ = [
    "PAPER_BACKBONES",
    "REPRODUCE_TAG",
    "TABLE_MARKDOWN",
    "TABLE_JSON",
    "pair_config",
    "threads_per_run",
    "version_image_ids",
    "start_parent_run",
    "prepare_images",
    "train_child",
    "read_child_result",
    "compare_variants",
    "build_table",
    "finish_parent_run",
    "list_reproduce_runs",
    "load_table_markdown",
]

logger = logging.getLogger(__name__)

# The seven backbones of the LA-DNN paper (Liu et al. 2020), in registry order.
PAPER_BACKBONES = tuple(name for name, spec in BACKBONES.items() if spec.in_paper)
# Tag that marks reproduce runs: "parent" on the parent run, "child" on each nested run.
REPRODUCE_TAG = "ladnn.reproduce"
TABLE_MARKDOWN = "reproduce/table.md"
TABLE_JSON = "reproduce/table.json"
PREDICTIONS_TEST = "predictions/predictions_test.csv"
# Threshold metrics whose intervals are added to each child run. Training logs the AUC interval
# itself.
INTERVAL_METRICS = ("sensitivity", "f1", "accuracy")


def pair_config(cfg: LadnnCfg, backbone: str, variant: str, threads: int = 0) -> LadnnCfg:
    """Return `cfg` with the model section set to one (backbone, variant) pair."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: expected one of {sorted(BACKBONES)}")
    model = dataclasses.replace(cfg.model, backbone=backbone, variant=variant)
    train = dataclasses.replace(cfg.train, threads=threads or cfg.train.threads)
    return dataclasses.replace(cfg, model=model, train=train)


def threads_per_run(cfg: LadnnCfg, max_parallel: int) -> int:
    """Torch threads for each of `max_parallel` concurrent CPU runs, so they share the cores.

    Returns 0 (one per core) on a GPU or with a single run, and `train.threads` when it is set.
    """
    if cfg.train.threads or max_parallel <= 1 or select_device(cfg.train.device).type != "cpu":
        return cfg.train.threads
    return max(1, (os.cpu_count() or 1) // max_parallel)


def version_image_ids(workspace: Workspace, version: DatasetVersion, store: DatasetStore) -> set:
    """Return the image ids of `version`; raise when `data/` lacks some of them."""
    ids = set(read_version_metadata(workspace, version)["image_id"])
    present = set(store.read_metadata()["image_id"])
    missing = ids - present
    if missing:
        raise ValueError(
            f"dataset version {version.name} has {len(missing)} image(s) that {store.root} does "
            f"not contain: restore data/ at {version.name} (dvc checkout) or choose another "
            "--version"
        )
    return ids


def start_parent_run(
    cfg: LadnnCfg, workspace: Workspace, version: DatasetVersion, backbones: list[str]
) -> str:
    """Create the parent MLflow run with the configuration and the chosen backbones."""
    experiment_id = configure_mlflow(cfg, workspace)
    client = mlflow_client(tracking_uri_for(cfg, workspace))
    run = client.create_run(
        experiment_id,
        run_name=f"reproduce {version.name} {cfg.profile}",
        tags={
            REPRODUCE_TAG: "parent",
            "dataset_version": version.name,
            "dataset_md5": version.md5,
            "profile": cfg.profile,
            "backbones": ",".join(backbones),
            "git_commit": git_commit(),
        },
    )
    run_id = run.info.run_id
    # Server URLs in the configuration may carry passwords, which must not reach the run.
    logged_config = redact_secrets(config_to_dict(cfg))
    params = {
        key: value
        for key, value in flatten_config(logged_config).items()
        if not key.startswith("model.")
    }
    for key, value in params.items():
        client.log_param(run_id, key, value[:6000])
    client.log_dict(run_id, logged_config, "config.yaml")
    return run_id


def prepare_images(cfg: LadnnCfg, workspace: Workspace, store: DatasetStore, image_ids) -> int:
    """Decode every image into the workspace cache once, before child runs read it in parallel."""
    cache = ImageCache(store, workspace.cache_dir, cfg.train.image_size)
    return len(cache.get(sorted(image_ids)))


def _read_predictions(client: MlflowClient, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, PREDICTIONS_TEST, folder)
        return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})


def _interval_metrics(
    predictions: pd.DataFrame, threshold: float, *, n_resamples: int, seed: int
) -> dict[str, float]:
    """Patient-bootstrap 95% intervals of the threshold metrics, as `test_<metric>_ci_*`."""
    y = predictions["label"].to_numpy(dtype=int)
    p = predictions["covid_probability"].to_numpy(dtype=float)
    patients = predictions["patient_id"].astype(str).to_numpy()
    logged = {}
    for name in INTERVAL_METRICS:

        def statistic(labels: np.ndarray, scores: np.ndarray, name: str = name) -> float:
            return threshold_metrics(labels, scores, threshold)[name]

        low, high = bootstrap_ci(statistic, y, p, patients, n_resamples=n_resamples, seed=seed)
        logged[f"test_{name}_ci_low"] = low
        logged[f"test_{name}_ci_high"] = high
    return logged


def train_child(
    cfg: LadnnCfg,
    workspace: Workspace,
    store: DatasetStore,
    version: DatasetVersion,
    parent_run_id: str,
    image_ids: set[str],
) -> str:
    """Train one (backbone, variant) as a child run of `parent_run_id`; return its run id.

    After training, the patient-bootstrap intervals of sensitivity, F1 and accuracy at the run's
    frozen threshold are computed from its logged test predictions and logged to the same run.
    """
    run = run_training(
        cfg,
        workspace,
        store,
        version,
        run_name=f"{cfg.model.backbone}:{cfg.model.variant}",
        progress=False,
        image_ids=image_ids,
        extra_tags={MLFLOW_PARENT_RUN_ID: parent_run_id, REPRODUCE_TAG: "child"},
    )
    client = mlflow_client(tracking_uri_for(cfg, workspace))
    predictions = _read_predictions(client, run.run_id)
    intervals = _interval_metrics(
        predictions, run.threshold, n_resamples=cfg.eval.bootstrap, seed=cfg.eval.seed
    )
    for key, value in intervals.items():
        client.log_metric(run.run_id, key, value)
    return run.run_id


def read_child_result(client: MlflowClient, run_id: str) -> VariantResult:
    """Read one child run's table cells from the metrics and tags it logged in MLflow."""
    run = client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    cells = {}
    for metric, _label in TABLE_METRICS:
        cells[metric] = MetricCell(
            value=metrics.get(f"test_{metric}", math.nan),
            ci_low=metrics.get(f"test_{metric}_ci_low", math.nan),
            ci_high=metrics.get(f"test_{metric}_ci_high", math.nan),
        )
    pretrained = tags.get("pretrained")
    return VariantResult(
        variant=tags.get("variant", ""),
        run_id=run_id,
        pretrained=None if pretrained is None else pretrained == "true",
        weights_source=tags.get("weights_source", ""),
        threshold=metrics.get("threshold", math.nan),
        metrics=cells,
    )


def compare_variants(client: MlflowClient, baseline_run: str, ladnn_run: str) -> DelongResult:
    """DeLong's test of the LA-DNN run's test AUC against the baseline run's, image by image."""
    baseline = _read_predictions(client, baseline_run)
    ladnn = _read_predictions(client, ladnn_run)
    if set(baseline["image_id"]) != set(ladnn["image_id"]):
        raise ValueError(
            f"runs {baseline_run} and {ladnn_run} scored different test images, so their AUCs "
            "cannot be compared pairwise"
        )
    joined = baseline.merge(ladnn, on="image_id", suffixes=("_baseline", "_ladnn"))
    if not (joined["label_baseline"] == joined["label_ladnn"]).all():
        raise ValueError(f"runs {baseline_run} and {ladnn_run} disagree on test labels")
    return delong_test(
        joined["label_baseline"].to_numpy(),
        joined["covid_probability_ladnn"].to_numpy(),
        joined["covid_probability_baseline"].to_numpy(),
    )


def build_table(
    client: MlflowClient,
    cfg: LadnnCfg,
    parent_run_id: str,
    version: DatasetVersion,
    children: dict[tuple[str, str], str | Exception],
) -> BackboneTable:
    """Build the table from the child runs (`(backbone, variant)` -> run id, or the error)."""
    rows = []
    test_images = 0
    backbones = list(dict.fromkeys(backbone for backbone, _ in children))
    for backbone in backbones:
        variants: dict[str, VariantResult] = {}
        for variant in VARIANTS:
            outcome = children.get((backbone, variant))
            if outcome is None:
                continue
            if isinstance(outcome, Exception):
                variants[variant] = VariantResult(variant=variant, error=str(outcome)[:300])
            else:
                variants[variant] = read_child_result(client, outcome)
        row = BackboneRow(backbone, BACKBONES[backbone].in_paper, variants)
        trained = {v: r.run_id for v, r in variants.items() if r.run_id is not None}
        if set(trained) == set(VARIANTS):
            result = compare_variants(client, trained["baseline"], trained["ladnn"])
            row.delong_p_value, row.auc_difference, row.delong_z = (
                result.p_value,
                result.difference,
                result.z,
            )
            test_images = len(_read_predictions(client, trained["ladnn"]))
        rows.append(row)
    return BackboneTable(
        parent_run_id=parent_run_id,
        dataset_version=version.name,
        profile=cfg.profile,
        image_size=cfg.train.image_size,
        epochs=cfg.train.epochs,
        test_images=test_images,
        threshold_rule=cfg.eval.threshold_rule,
        rows=rows,
    )


def finish_parent_run(client: MlflowClient, table: BackboneTable, *, failed: bool) -> str:
    """Log the table (Markdown and JSON) and the DeLong results to the parent run and end it."""
    run_id = table.parent_run_id
    markdown = render_markdown(table)
    client.log_text(run_id, markdown, TABLE_MARKDOWN)
    client.log_dict(run_id, table.to_dict(), TABLE_JSON)
    for row in table.rows:
        if not math.isnan(row.delong_p_value):
            client.log_metric(run_id, f"delong_p_{row.backbone}", row.delong_p_value)
            client.log_metric(run_id, f"auc_difference_{row.backbone}", row.auc_difference)
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    return markdown


def list_reproduce_runs(client: MlflowClient, experiment_name: str) -> pd.DataFrame:
    """List the reproduce parent runs of an experiment, newest first."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=["run id", "name", "status", "dataset", "profile"])
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{REPRODUCE_TAG}` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    rows = [
        {
            "run id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "dataset": run.data.tags.get("dataset_version", ""),
            "profile": run.data.tags.get("profile", ""),
        }
        for run in runs
    ]
    return pd.DataFrame(rows, columns=["run id", "name", "status", "dataset", "profile"])


def load_table_markdown(client: MlflowClient, run_id: str) -> str | None:
    """Return the logged Markdown table of a parent run, or None while the run has none."""
    names = {item.path for item in client.list_artifacts(run_id, Path(TABLE_MARKDOWN).parent.name)}
    if TABLE_MARKDOWN not in names:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(run_id, TABLE_MARKDOWN, folder)).read_text("utf-8")
