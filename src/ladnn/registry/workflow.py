"""Review steps used by the CLI and flows: open the registry, compare a candidate, store the report."""

from __future__ import annotations

import logging

import pandas as pd

from ladnn.config import LadnnCfg
from ladnn.data.operations import find_version, read_version_metadata
from ladnn.data.store import DatasetStore
from ladnn.registry.audit import AuditLog, audit_database_url
from ladnn.registry.compare import ComparisonReport, compare_loaded, render_markdown
from ladnn.registry.loading import load_version
from ladnn.registry.review import Registry, ReviewError
from ladnn.tracking.store import configure_mlflow, mlflow_client, tracking_uri_for
from ladnn.workspace import Workspace

__all__ = ["open_registry", "frozen_test_frame", "compare_versions"]

logger = logging.getLogger(__name__)


def open_registry(cfg: LadnnCfg, workspace: Workspace) -> Registry:
    configure_mlflow(cfg, workspace)
    uri = tracking_uri_for(cfg, workspace)
    audit = AuditLog(audit_database_url(uri, cfg.tracking.audit_uri))
    registry = Registry(mlflow_client(uri), audit, cfg.tracking.registered_model)
    registry.reconcile()
    return registry


def _train_ids(workspace: Workspace, dataset_version: str | None) -> set[str]:
    if not dataset_version:
        return set()
    try:
        metadata = read_version_metadata(workspace, find_version(workspace, dataset_version))
    except (ValueError, FileNotFoundError) as err:
        logger.warning("cannot read training split of dataset %s: %s", dataset_version, err)
        return set()
    return set(metadata.loc[metadata["split"] == "train", "image_id"])


def frozen_test_frame(
    store: DatasetStore, workspace: Workspace, dataset_versions: list[str | None]
) -> pd.DataFrame:
    """Test rows of the current data that no listed model's training split contains."""
    frame = store.read_metadata()
    test = frame[frame["split"] == "test"]
    trained = set().union(*(_train_ids(workspace, version) for version in dataset_versions))
    overlap = test["image_id"].isin(trained)
    if overlap.any():
        logger.warning("excluding %d test image(s) that a model trained on", int(overlap.sum()))
    return test[~overlap].reset_index(drop=True)


def compare_versions(
    cfg: LadnnCfg,
    workspace: Workspace,
    store: DatasetStore,
    candidate: str,
    champion: str | None = None,
    *,
    propose: bool = True,
) -> tuple[ComparisonReport, str]:
    """Compare `candidate` with `champion` (default: the current champion), store the report as an
    artifact of the candidate's run, tag the candidate with its gate state, and mark it challenger
    when its gates pass against the current champion and `propose` is set. Return the report and
    its Markdown."""
    registry = open_registry(cfg, workspace)
    current = registry.champion()
    if champion is not None and str(champion) == str(candidate):
        raise ReviewError(f"cannot compare version {candidate} with itself")
    champion = champion or current
    if champion == str(candidate):
        raise ReviewError(f"version {candidate} is the champion; compare another version with it")
    client = registry.client
    registry.require_version(candidate)
    if champion:
        registry.require_version(champion)
    loaded_candidate = load_version(client, registry.name, candidate)
    loaded_champion = load_version(client, registry.name, champion) if champion else None
    frame = frozen_test_frame(
        store,
        workspace,
        [loaded_candidate.tags.get("dataset_version")]
        + ([loaded_champion.tags.get("dataset_version")] if loaded_champion else []),
    )
    if frame.empty or frame["label"].nunique() < 2:
        raise ReviewError("the frozen test images do not hold both classes; nothing to compare on")
    report = compare_loaded(
        loaded_candidate,
        loaded_champion,
        store,
        frame,
        workspace.cache_dir,
        cfg.gates,
        n_resamples=cfg.eval.bootstrap,
        seed=cfg.eval.seed,
    )
    markdown = render_markdown(report)

    model_version = client.get_model_version(registry.name, str(candidate))
    stem = f"comparison/v{candidate}_vs_{'v' + champion if champion else 'none'}"
    client.log_text(model_version.run_id, report.to_json(), f"{stem}.json")
    client.log_text(model_version.run_id, markdown, f"{stem}.md")
    uri = f"runs:/{model_version.run_id}/{stem}.json"
    state = "passed" if report.gates_passed else "failed"
    client.set_model_version_tag(registry.name, str(candidate), "gate_state", state)
    client.set_model_version_tag(registry.name, str(candidate), "comparison_uri", uri)
    client.set_model_version_tag(registry.name, str(candidate), "compared_with", champion or "none")
    # Only a comparison with the current champion can make a version the challenger.
    if propose and report.gates_passed and champion == current:
        registry.propose(str(candidate))
    logger.info("compared v%s with %s: gates %s", candidate, champion or "no champion", state)
    return report, markdown
