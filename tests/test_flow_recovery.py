"""Recovery of flow runs whose process died, against Prefect's test server.

The test creates runs through the served deployments and moves them to `Running`, as a runner
would. No process runs them, so they send no heartbeat unless the test emits one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Running
from prefect.testing.utilities import prefect_test_harness

from pipelines.recovery import (
    ATTEMPT_TAG,
    HEARTBEAT_EVENT,
    REPLACED_TAG,
    automation_name,
    ensure_crash_automation,
    recover_runs,
)
from pipelines.serve import SERVED_DEPLOYMENTS, build_deployments


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def workspace(harness, tmp_path_factory):
    """A workspace whose deployments are registered on the test server."""
    root = str(tmp_path_factory.mktemp("recovery") / "workspace")
    for deployment in build_deployments(root, overrides=["train.epochs=1"]):
        deployment.apply()
    return root


def _start_run(deployment: str, workspace: str, **parameters) -> UUID:
    """Create a run of `deployment` and set it Running, as a runner starting it would."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"workspace": workspace, **parameters},
        )
        client.set_flow_run_state(run.id, Running(), force=True)
    return run.id


def _read(run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _recover(workspace: str, **options):
    return recover_runs(workspace, SERVED_DEPLOYMENTS, **{"stale_after": 0, **options})


def _only_for(recoveries, run_id: UUID):
    return [recovery for recovery in recoveries if recovery.crashed_run == run_id]


def test_silent_retrain_crashed_and_started_again(workspace):
    run_id = _start_run("retrain/retrain", workspace, dataset_version="v2")

    [recovery] = _only_for(_recover(workspace), run_id)

    crashed = _read(run_id)
    assert crashed.state.type == StateType.CRASHED
    assert "No heartbeat" in crashed.state.message
    assert recovery.marked_crashed
    assert recovery.attempt == 1
    assert f"{REPLACED_TAG}{recovery.new_run}" in crashed.tags
    new_run = _read(recovery.new_run)
    assert new_run.deployment_id == crashed.deployment_id
    assert new_run.parameters == crashed.parameters
    assert new_run.parameters["dataset_version"] == "v2"
    assert new_run.state.type == StateType.SCHEDULED
    assert f"{ATTEMPT_TAG}1" in new_run.tags


def test_restarted_once_only(workspace):
    run_id = _start_run("retrain/retrain", workspace, dataset_version="v1")
    [first] = _only_for(_recover(workspace), run_id)

    again = _only_for(_recover(workspace), run_id)

    assert first.new_run is not None
    assert again == []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert sum(f"{REPLACED_TAG}{first.new_run}" in run.tags for run in runs) == 1


def test_restarts_stop_after_max_attempts(workspace):
    run_id = _start_run("cycle/cycle", workspace)
    attempts = []
    for _ in range(3):
        [recovery] = _only_for(_recover(workspace, max_attempts=2), run_id)
        attempts.append(recovery)
        if recovery.new_run is None:
            break
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(recovery.new_run, Running(), force=True)
        run_id = recovery.new_run

    assert [recovery.attempt for recovery in attempts] == [1, 2, 3]
    assert _read(attempts[0].new_run).parameters["resume"] is True
    assert attempts[-1].new_run is None
    assert "not started again" in attempts[-1].message
    assert _only_for(_recover(workspace, max_attempts=2), run_id) == []


def test_ingest_marked_crashed_not_restarted(workspace):
    run_id = _start_run("ingest/ingest", workspace, source="/data/batch")

    [recovery] = _only_for(_recover(workspace), run_id)

    assert recovery.marked_crashed
    assert recovery.new_run is None
    assert _read(run_id).state.type == StateType.CRASHED


def test_other_workspace_untouched(workspace, tmp_path):
    run_id = _start_run("retrain/retrain", str(tmp_path / "elsewhere"), dataset_version="v1")

    recoveries = _recover(workspace)

    assert _only_for(recoveries, run_id) == []
    assert _read(run_id).state.type == StateType.RUNNING


def _wait_for_heartbeat(run_id: UUID) -> None:
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[HEARTBEAT_EVENT]),
                    resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
                ),
                limit=1,
            )
            if page.events:
                return
            time.sleep(0.5)
    raise AssertionError("the heartbeat event never reached the server")


def test_run_with_recent_heartbeat_untouched(workspace):
    """Silent since it started for longer than `stale_after`, but its heartbeat is recent."""
    run_id = _start_run("retrain/retrain", workspace, dataset_version="v3")
    started = _read(run_id).state.timestamp
    time.sleep(4)
    emit_event(HEARTBEAT_EVENT, resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"})
    _wait_for_heartbeat(run_id)
    stale_after = (datetime.now(UTC) - started).total_seconds() - 2

    alive = _only_for(_recover(workspace, stale_after=stale_after), run_id)
    state_after_check = _read(run_id).state.type
    silent = _only_for(_recover(workspace, stale_after=0), run_id)

    assert alive == []
    assert state_after_check == StateType.RUNNING
    assert silent and silent[0].new_run is not None


def test_crash_automation_created_once(workspace):
    with get_client(sync_client=True) as client:
        ids = [client.read_deployment_by_name(name).id for name in SERVED_DEPLOYMENTS]

    first = ensure_crash_automation(workspace, ids, stale_after=120)
    second = ensure_crash_automation(workspace, ids, stale_after=90)

    with get_client(sync_client=True) as client:
        [automation] = client.read_automations_by_name(automation_name(workspace))
    assert first is not None and second == automation.id
    trigger = automation.trigger
    assert trigger.posture == "Proactive"
    assert trigger.within.total_seconds() == 90
    assert trigger.after == {HEARTBEAT_EVENT}
    assert "prefect.flow-run.Completed" in trigger.expect
    related = trigger.match_related.root["prefect.resource.id"]
    assert sorted(related) == sorted(f"prefect.deployment.{i}" for i in ids)
    [action] = automation.actions
    assert action.state == StateType.CRASHED
