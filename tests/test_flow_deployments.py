"""The deployments `ladnn flows serve` starts: schedules, limits and the retraining trigger."""

from __future__ import annotations

import pytest

from pipelines.common import DATASET_VERSION_CREATED, DRIFT_DETECTED
from pipelines.serve import build_deployments


def _by_name(deployments) -> dict:
    return {deployment.name: deployment for deployment in deployments}


@pytest.mark.parametrize(
    ("retrain_on", "event"), [("version", DATASET_VERSION_CREATED), ("drift", DRIFT_DETECTED)]
)
def test_retrain_trigger_event(tmp_path, retrain_on, event):
    deployments = _by_name(build_deployments(str(tmp_path), 30, ["train.epochs=2"], retrain_on))
    [trigger] = deployments["retrain"].triggers
    assert trigger.expect == {event}
    assert trigger.match.root == {"ladnn.workspace": str(tmp_path)}
    assert trigger.parameters["dataset_version"] == "{{ event.resource['ladnn.dataset.version'] }}"
    assert trigger.parameters["overrides"] == ["train.epochs=2"]


def test_deployments_carry_configuration(tmp_path):
    config = tmp_path / "site.yaml"
    deployments = build_deployments(
        str(tmp_path), 30, ["train.epochs=4"], profile="short", config_path=str(config)
    )
    for deployment in deployments:
        assert deployment.parameters["profile"] == "short", deployment.name
        assert deployment.parameters["config_path"] == str(config), deployment.name
        assert deployment.parameters["overrides"] == ["train.epochs=4"], deployment.name
    [trigger] = _by_name(deployments)["retrain"].triggers
    assert trigger.parameters["profile"] == "short"


def test_inbox_schedule_and_limit(tmp_path):
    inbox = _by_name(build_deployments(str(tmp_path), 45))["inbox"]
    [schedule] = inbox.schedules
    assert schedule.schedule.interval.total_seconds() == 45
    assert inbox.concurrency_limit == 1
    assert inbox.parameters["workspace"] == str(tmp_path)


def test_unknown_retrain_event_rejected(tmp_path):
    with pytest.raises(ValueError, match="retrain_on must be one of"):
        build_deployments(str(tmp_path), retrain_on="nightly")
