"""Serve the flows as deployments: the inbox on a schedule, retraining on each new dataset version."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Literal

from prefect import serve
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from pipelines.common import DATASET_VERSION_CREATED, DRIFT_DETECTED
from pipelines.cycle import cycle_flow
from pipelines.inbox import inbox_flow
from pipelines.ingest import ingest_flow
from pipelines.recovery import HEARTBEAT_SECONDS, start_recovery_loop
from pipelines.retrain import retrain_flow
from pipelines.review import review_flow

__all__ = ["RETRAIN_EVENTS", "SERVED_DEPLOYMENTS", "build_deployments", "serve_flows"]


RETRAIN_EVENTS = {"version": DATASET_VERSION_CREATED, "drift": DRIFT_DETECTED}
# `flow/deployment` names of what `build_deployments` returns.
SERVED_DEPLOYMENTS = (
    "ingest-inbox/inbox",
    "ingest/ingest",
    "retrain/retrain",
    "review/review",
    "cycle/cycle",
)


def build_deployments(
    workspace: str,
    inbox_interval_seconds: float = 60.0,
    overrides: list[str] | None = None,
    retrain_on: Literal["version", "drift"] = "version",
    profile: str | None = None,
    config_path: str | None = None,
) -> list:
    """Deployments of every flow, with the workspace and configuration (`profile`, `config_path`,
    `overrides`) as default parameters, so every run resolves the settings the server started with.

    `retrain_on` picks the event that starts retraining: every new dataset version, or only a
    version whose new batch drifted from the training data.
    """
    if retrain_on not in RETRAIN_EVENTS:
        raise ValueError(f"retrain_on must be one of {sorted(RETRAIN_EVENTS)}, not {retrain_on!r}")
    common = {
        "workspace": workspace,
        "overrides": overrides or [],
        "profile": profile,
        "config_path": config_path,
    }
    retrain_trigger = DeploymentEventTrigger(
        name=f"retrain-on-{retrain_on}",
        expect={RETRAIN_EVENTS[retrain_on]},
        match={"ladnn.workspace": workspace},
        parameters={"dataset_version": "{{ event.resource['ladnn.dataset.version'] }}", **common},
    )
    return [
        inbox_flow.to_deployment(
            name="inbox",
            interval=timedelta(seconds=inbox_interval_seconds),
            concurrency_limit=1,
            parameters=common,
            description="Ingest batches dropped into <workspace>/inbox/.",
        ),
        ingest_flow.to_deployment(
            name="ingest", parameters=common, description="Ingest one batch path."
        ),
        retrain_flow.to_deployment(
            name="retrain",
            triggers=[retrain_trigger],
            parameters=common,
            description=(
                "Retrain on a dataset version; runs on every new version"
                if retrain_on == "version"
                else "Retrain on a dataset version; runs when a new batch drifts"
            ),
        ),
        review_flow.to_deployment(
            name="review", parameters=common, description="Review candidates."
        ),
        cycle_flow.to_deployment(name="cycle", parameters=common, description="One whole cycle."),
    ]


def serve_flows(
    workspace: str,
    inbox_interval_seconds: float = 60.0,
    overrides: list[str] | None = None,
    retrain_on: Literal["version", "drift"] = "version",
    profile: str | None = None,
    config_path: str | None = None,
    stale_after: float = 4 * HEARTBEAT_SECONDS,
    max_restarts: int = 2,
) -> None:
    """Serve all deployments from this process until interrupted.

    The flow runs it starts send heartbeats. A background check marks a run that sent none for
    `stale_after` seconds Crashed and starts a crashed retraining or cycle run again, at most
    `max_restarts` times in a row (`pipelines.recovery`).
    """
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    stop = start_recovery_loop(
        workspace, SERVED_DEPLOYMENTS, stale_after=stale_after, max_attempts=max_restarts
    )
    try:
        serve(
            *build_deployments(
                workspace, inbox_interval_seconds, overrides, retrain_on, profile, config_path
            )
        )
    finally:
        stop.set()
