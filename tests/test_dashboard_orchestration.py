"""The dashboard's Prefect queries against Prefect's test server: recent runs, active retraining."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Completed, Running, Scheduled
from prefect.testing.utilities import prefect_test_harness

from dashboards import orchestration
from pipelines.serve import build_deployments


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The test server with the served deployments, some runs, and its URL for the dashboard."""
    with prefect_test_harness(server_startup_timeout=120):
        workspace = str(tmp_path_factory.mktemp("dashboard-prefect") / "workspace")
        for deployment in build_deployments(workspace):
            deployment.apply()
        runs = {}
        with get_client(sync_client=True) as client:
            for name, deployment, state in (
                ("done", "retrain/retrain", Completed()),
                ("training", "retrain/retrain", Running()),
                (
                    "later",
                    "ingest-inbox/inbox",
                    Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1)),
                ),
                ("inbox-done", "ingest-inbox/inbox", Completed()),
            ):
                deployment_id = client.read_deployment_by_name(deployment).id
                if state.is_scheduled():
                    # Created in its state, as a schedule creates runs: that sets the start time.
                    run = client.create_flow_run_from_deployment(
                        deployment_id, name=name, state=state
                    )
                else:
                    run = client.create_flow_run_from_deployment(deployment_id, name=name)
                    client.set_flow_run_state(run.id, state, force=True)
                runs[name] = str(run.id)
        yield PREFECT_API_URL.value(), runs


def test_recent_runs_leave_out_future_schedules(server, monkeypatch):
    url, runs = server
    monkeypatch.setenv("PREFECT_API_URL", url)

    listed = orchestration.recent_flow_runs()

    assert set(listed["flow run"]) == {"done", "training", "inbox-done"}
    assert set(listed["flow"]) == {"retrain", "ingest-inbox"}
    assert dict(zip(listed["flow run"], listed["state"], strict=True))["training"] == "Running"


def test_active_retrain_runs(server, monkeypatch):
    url, runs = server
    monkeypatch.setenv("PREFECT_API_URL", url)

    active = {run.flow_run_id: run for run in orchestration.active_retrain_runs()}

    assert active[runs["training"]].state == "Running"
    assert runs["done"] not in active
    assert runs["later"] not in active
    assert runs["inbox-done"] not in active


def test_retrain_button_creates_deployment_run(server, monkeypatch):
    """The dashboard only creates the run; the process serving the deployment trains."""
    url, _ = server
    monkeypatch.setenv("PREFECT_API_URL", url)

    started = orchestration.start_retrain({"dataset_version": "v2"})
    read_back = orchestration.flow_run_state(started.flow_run_id)

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(started.flow_run_id)
        deployment = client.read_deployment(run.deployment_id)
    assert deployment.name == "retrain"
    assert run.parameters["dataset_version"] == "v2"
    assert read_back.state == "Scheduled"
    assert read_back.name == started.name
