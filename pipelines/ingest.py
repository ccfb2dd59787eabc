"""The `ingest` flow: import a batch, validate it, version it, measure drift, emit events."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from ladnn.config import LadnnCfg
from ladnn.cycle import data_root
from ladnn.data.layouts import BatchKind, read_batch
from ladnn.data.operations import BatchImport, ImportLockedError, import_batch
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DvcError
from ladnn.monitoring.drift import measure_drift
from ladnn.registry.loading import load_version
from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace
from pipelines.common import DATASET_VERSION_CREATED, DRIFT_DETECTED, resolve

__all__ = ["ingest_flow"]


def _retry_store_errors(task, task_run, state) -> bool:
    """Retry failures of the stores (DVC, the dataset lock), not invalid batches."""
    try:
        state.result()
    except (DvcError, ImportLockedError):
        return True
    except Exception:  # noqa: BLE001 - anything else is a property of the batch
        return False
    return False


@task(
    name="import-batch",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_store_errors,
    timeout_seconds=3600,
)
def import_batch_task(
    cfg: LadnnCfg, workspace: Workspace, source: str, kind: BatchKind, label: int | None
) -> BatchImport:
    batch_id, items = read_batch(Path(source), kind, label=label)
    result = import_batch(
        data_root(cfg),
        workspace,
        batch_id,
        items,
        progress=False,
        wait_seconds=600,
        servers=cfg.servers,
    )
    logger = get_run_logger()
    logger.info(result.report.summary())
    logger.info(
        "dataset version %s %s (%d images)",
        result.version.name,
        "created" if result.created else "unchanged",
        result.version.n_images,
    )
    return result


@task(name="measure-drift", retries=1, retry_delay_seconds=5)
def measure_drift_task(cfg: LadnnCfg, workspace: Workspace, batch_id: str) -> dict:
    registry = open_registry(cfg, workspace)
    champion_version = registry.champion()
    champion = (
        load_version(registry.client, registry.name, champion_version) if champion_version else None
    )
    report = measure_drift(
        DatasetStore(data_root(cfg)),
        batch_id,
        workspace.cache_dir,
        champion=champion,
        ks_threshold=cfg.drift.ks_threshold,
        embedding_threshold=cfg.drift.embedding_threshold,
    )
    get_run_logger().info(
        "drift of %s: %s",
        batch_id,
        ", ".join(f"{k}={v:.3f}" for k, v in report.statistics.items()) or "not measured",
    )
    return report.as_dict()


@flow(name="ingest")
def ingest_flow(
    source: str,
    kind: BatchKind = "auto",
    label: int | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
) -> dict:
    """Import the batch at `source` (release folder, LA-DNN dated batch, or contributed folder/zip),
    validate and version it. Emits `ladnn.dataset.version.created` when a new version is made and
    `ladnn.dataset.drift.detected` when the batch drifts from the training data."""
    cfg, space = resolve(config_path, overrides, profile, workspace)
    result = import_batch_task(cfg, space, source, kind, label)
    version = result.version
    drift = measure_drift_task(cfg, space, result.report.batch_id) if result.created else None
    resource = {
        "prefect.resource.id": f"ladnn.dataset.{version.name}",
        "ladnn.dataset.version": version.name,
        "ladnn.batch": result.report.batch_id,
        "ladnn.workspace": str(space.root),
    }
    if result.created:
        emit_event(
            DATASET_VERSION_CREATED,
            resource=resource,
            payload={
                "n_images": version.n_images,
                "added": len(result.report.added),
                "counts": version.counts,
            },
        )
    if drift is not None and drift["detected"]:
        emit_event(DRIFT_DETECTED, resource=resource, payload={"drifted": drift["drifted"]})
    return {
        "dataset_version": version.name,
        "created": result.created,
        "batch_id": result.report.batch_id,
        "added": len(result.report.added),
        "rejected": len(result.report.rejected),
        "drift": drift,
    }
