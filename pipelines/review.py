"""The `review` flow: compare the best candidate with the champion, apply the gates, mark it
challenger, and optionally wait for the reviewer's decision."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, runtime, task
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL

from ladnn.config import LadnnCfg
from ladnn.cycle import data_root
from ladnn.data.store import DatasetStore
from ladnn.registry.review import Registry
from ladnn.registry.waiting import clear_waiting, mark_waiting
from ladnn.registry.workflow import compare_versions, open_registry
from ladnn.workspace import Workspace
from pipelines.common import resolve

__all__ = ["ReviewDecision", "review_flow"]


class ReviewDecision(RunInput):
    """A reviewer's decision on the waiting candidate.

    `audit_seq` is set when the CLI or the dashboard already recorded the decision, so the flow
    only reports it. Without it, the flow records the decision itself.
    """

    approve: bool
    reviewer: str
    reason: str
    override: bool = False
    audit_seq: int | None = None


def _validation_auc(client: MlflowClient, name: str, version: str) -> float:
    model_version = client.get_model_version(name, version)
    return float(client.get_run(model_version.run_id).data.metrics.get("val_auc", float("-inf")))


@task(name="compare-candidate", retries=2, retry_delay_seconds=[5, 30])
def compare_task(cfg: LadnnCfg, workspace: Workspace, candidate: str) -> dict:
    report, _ = compare_versions(cfg, workspace, DatasetStore(data_root(cfg)), candidate)
    return {
        "candidate": candidate,
        "champion": report.champion,
        "gates_passed": report.gates_passed,
        "gates": [(gate.name, gate.passed, gate.detail) for gate in report.gates],
        "auc": report.metrics["candidate"]["auc"],
        "delong_p": report.delong["p_value"] if report.delong else None,
    }


@flow(name="review")
def review_flow(
    candidates: list[str],
    wait_for_decision: bool = False,
    decision_timeout_seconds: int = 7 * 24 * 3600,
    poll_interval_seconds: int = 10,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
) -> dict:
    """Pick the candidate with the best validation AUC (never the test split), compare it with the
    champion and mark it `challenger` when its gates pass. With `wait_for_decision`, the run pauses
    until a reviewer decides: a decision made in the dashboard or with `ladnn promote/reject`
    resumes it, and one entered in the Prefect UI is applied by the flow."""
    logger = get_run_logger()
    cfg, space = resolve(config_path, overrides, profile, workspace)
    registry = open_registry(cfg, space)
    best = max(
        candidates, key=lambda version: _validation_auc(registry.client, registry.name, version)
    )
    logger.info("best candidate by validation AUC: version %s of %s", best, candidates)
    result = compare_task(cfg, space, best)
    for name, passed, detail in result["gates"]:
        logger.info("gate %s: %s (%s)", name, "passed" if passed else "FAILED", detail)
    if result["gates_passed"]:
        logger.info("version %s is the challenger, waiting for a reviewer", best)
    else:
        logger.warning(
            "version %s failed its gates; a reviewer may still promote it with an override", best
        )

    if wait_for_decision:
        result["decision"] = _wait_for_decision(
            registry, best, decision_timeout_seconds, poll_interval_seconds
        )
    return result


def _wait_for_decision(registry: Registry, version: str, timeout: int, poll_interval: int) -> dict:
    """Pause until a reviewer decides on `version`; return the audit event of the decision."""
    logger = get_run_logger()
    mark_waiting(registry, version, str(runtime.flow_run.id), PREFECT_API_URL.value())
    logger.info(
        "waiting for a reviewer's decision on version %s: decide in the dashboard or with "
        "`ladnn promote/reject %s`, or resume this run in the Prefect UI",
        version,
        version,
    )
    try:
        decision = pause_flow_run(
            wait_for_input=ReviewDecision, timeout=timeout, poll_interval=poll_interval
        )
    finally:
        clear_waiting(registry, version)
    if decision.audit_seq is not None:
        [event] = [e for e in registry.audit.events(registry.name) if e.seq == decision.audit_seq]
        logger.info("decision #%d recorded by %s", event.seq, event.reviewer)
    elif decision.approve:
        event = registry.promote(
            version, reviewer=decision.reviewer, reason=decision.reason, override=decision.override
        )
    else:
        event = registry.reject(version, reviewer=decision.reviewer, reason=decision.reason)
    logger.info("version %s: %s by %s (%s)", version, event.action, event.reviewer, event.reason)
    return event.as_dict()
