"""Prefect from the dashboard: recent flow runs, and retraining started as a deployment run.

Only a Prefect server named by `PREFECT_API_URL` is used. Without it these functions raise
`PrefectUnavailable` instead of letting the Prefect client start a temporary local server.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import pandas as pd

__all__ = [
    "RETRAIN_DEPLOYMENT",
    "PrefectUnavailable",
    "FlowRunState",
    "prefect_api_url",
    "recent_flow_runs",
    "active_retrain_runs",
    "start_retrain",
    "flow_run_state",
]

logger = logging.getLogger(__name__)

# Deployment served by `ladnn flows serve` (pipelines/serve.py): flow "retrain", deployment
# "retrain".
RETRAIN_DEPLOYMENT = "retrain/retrain"
API_TIMEOUT_SECONDS = 5.0


class PrefectUnavailable(RuntimeError):
    """No Prefect API is configured, or it does not respond."""


@dataclass(frozen=True)
class FlowRunState:
    flow_run_id: str
    name: str
    state: str
    message: str


def prefect_api_url() -> str | None:
    return os.environ.get("PREFECT_API_URL") or None


@contextmanager
def _client():
    """Open a sync Prefect client for the `PREFECT_API_URL` that the environment has now.

    The URL is pinned with `temporary_settings`, because Prefect reads its settings once at import
    and would otherwise start a temporary local server when the URL was unset then.
    """
    url = prefect_api_url()
    if url is None:
        raise PrefectUnavailable(
            "PREFECT_API_URL is not set: start a server (`prefect server start`), serve the flows "
            "(`ladnn flows serve`) and start the dashboard with PREFECT_API_URL exported"
        )
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        client = get_client(sync_client=True, httpx_settings={"timeout": API_TIMEOUT_SECONDS})
        with client:
            error = client.api_healthcheck()
            if error is not None:
                raise PrefectUnavailable(f"the Prefect API at {url} does not answer: {error}")
            yield client


def recent_flow_runs(limit: int = 10) -> pd.DataFrame:
    """List the latest flow runs due by now, newest first, with their flow name and state.

    Runs scheduled for later (the inbox deployment keeps a queue of them) are left out, so they do
    not hide the runs that happened.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    due = FlowRunFilter(
        expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC))
    )
    with _client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=due, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit
        )
        flow_names = {
            flow_id: client.read_flow(flow_id).name for flow_id in {run.flow_id for run in runs}
        }
    rows = [
        {
            "flow": flow_names.get(run.flow_id, ""),
            "flow run": run.name,
            "state": run.state.name if run.state else "",
            "started (UTC)": _time(run.start_time),
            "ended (UTC)": _time(run.end_time),
            "id": str(run.id),
        }
        for run in runs
    ]
    return pd.DataFrame(rows)


def active_retrain_runs() -> list[FlowRunState]:
    """Runs of the retrain deployment that are due by now and have not ended."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    with _client() as client:
        try:
            deployment = client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
        except ObjectNotFound:
            return []
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        )
    return [_state_of(run) for run in runs]


def _time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def start_retrain(parameters: dict | None = None) -> FlowRunState:
    """Create a run of the retrain deployment and return at once; a Prefect worker runs it."""
    from prefect.deployments import run_deployment

    with _client():
        flow_run = run_deployment(RETRAIN_DEPLOYMENT, parameters=parameters or {}, timeout=0)
    logger.info("started flow run %s of deployment %s", flow_run.id, RETRAIN_DEPLOYMENT)
    return _state_of(flow_run)


def flow_run_state(flow_run_id: str) -> FlowRunState:
    with _client() as client:
        return _state_of(client.read_flow_run(UUID(flow_run_id)))


def _state_of(flow_run) -> FlowRunState:
    state = flow_run.state
    return FlowRunState(
        flow_run_id=str(flow_run.id),
        name=flow_run.name,
        state=state.name if state else "unknown",
        message=(state.message or "") if state else "",
    )
