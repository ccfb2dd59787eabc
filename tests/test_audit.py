"""The review audit log on a SQLite file: sequence numbers, stale writes and champion events."""

from __future__ import annotations

from pathlib import Path

import pytest

from ladnn.registry.audit import AuditLog, ConcurrentReviewError, audit_database_url


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{tmp_path / 'nested' / 'audit.db'}")


def record(log: AuditLog, model: str, action: str, to_version: str, **extra):
    """Append an event after the model's last one."""
    return log.append(
        model_name=model,
        expected_seq=log.last_seq(model),
        action=action,
        reviewer="alice",
        reason=f"{action} {to_version}",
        to_version=to_version,
        **extra,
    )


def test_empty_log_has_seq_zero(log):
    assert log.last_seq("ladnn") == 0
    assert log.events("ladnn") == []
    assert log.last_champion_event("ladnn") is None


def test_creates_sqlite_folder(tmp_path):
    AuditLog(f"sqlite:///{tmp_path / 'a' / 'b' / 'audit.db'}")
    assert (tmp_path / "a" / "b" / "audit.db").is_file()


def test_append_increments_seq(log):
    first = record(log, "ladnn", "promote", "1")
    second = record(log, "ladnn", "promote", "2")
    assert first.seq == 1
    assert second.seq == 2
    assert log.last_seq("ladnn") == 2


def test_append_stores_all_fields(log):
    log.append(
        model_name="ladnn",
        expected_seq=0,
        action="promote",
        reviewer="alice",
        reason="better AUC",
        from_version="1",
        to_version="2",
        comparison="runs:/abc/comparison/v2_vs_v1.json",
        details={"override": True, "problems": ["its gates are failed"]},
    )
    [event] = log.events("ladnn")
    assert event.model_name == "ladnn"
    assert event.seq == 1
    assert event.action == "promote"
    assert event.from_version == "1"
    assert event.to_version == "2"
    assert event.reviewer == "alice"
    assert event.reason == "better AUC"
    assert event.comparison == "runs:/abc/comparison/v2_vs_v1.json"
    assert event.details == {"override": True, "problems": ["its gates are failed"]}
    assert event.created_at


def test_missing_details_read_as_empty(log):
    record(log, "ladnn", "promote", "1")
    assert log.events("ladnn")[0].details == {}


def test_stale_seq_raises(log):
    record(log, "ladnn", "promote", "1")
    with pytest.raises(ConcurrentReviewError) as raised:
        log.append(
            model_name="ladnn",
            expected_seq=0,
            action="promote",
            reviewer="bob",
            reason="late",
            to_version="2",
        )
    message = str(raised.value)
    assert "another review decision on ladnn was recorded" in message
    assert "event 1" in message
    assert "decide again" in message


def test_stale_seq_leaves_log_unchanged(log):
    record(log, "ladnn", "promote", "1")
    with pytest.raises(ConcurrentReviewError):
        log.append(
            model_name="ladnn",
            expected_seq=0,
            action="promote",
            reviewer="bob",
            reason="late",
            to_version="2",
        )
    assert [event.to_version for event in log.events("ladnn")] == ["1"]
    assert log.last_seq("ladnn") == 1


def test_seq_is_per_model(log):
    record(log, "ladnn", "promote", "1")
    other = record(log, "other", "promote", "7")
    assert other.seq == 1
    assert log.last_seq("ladnn") == 1
    assert log.last_seq("other") == 1


def test_events_ordered_by_seq(log):
    record(log, "ladnn", "promote", "1")
    record(log, "other", "promote", "7")
    record(log, "ladnn", "reject", "2")
    record(log, "ladnn", "promote", "3")
    events = log.events("ladnn")
    assert [event.seq for event in events] == [1, 2, 3]
    assert [event.action for event in events] == ["promote", "reject", "promote"]


def test_events_of_all_models(log):
    record(log, "other", "promote", "7")
    record(log, "ladnn", "promote", "1")
    everything = [(event.model_name, event.seq) for event in log.events()]
    assert everything == [("ladnn", 1), ("other", 1)]


def test_events_persist_across_instances(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    record(AuditLog(url), "ladnn", "promote", "1")
    reopened = AuditLog(url)
    assert reopened.last_seq("ladnn") == 1
    assert reopened.events("ladnn")[0].to_version == "1"


def test_last_champion_ignores_reject(log):
    record(log, "ladnn", "promote", "1")
    record(log, "ladnn", "reject", "2")
    event = log.last_champion_event("ladnn")
    assert event is not None
    assert event.action == "promote"
    assert event.to_version == "1"


def test_last_champion_includes_rollback(log):
    record(log, "ladnn", "promote", "1")
    record(log, "ladnn", "promote", "2", from_version="1")
    record(log, "ladnn", "rollback", "1", from_version="2")
    record(log, "ladnn", "reject", "3")
    event = log.last_champion_event("ladnn")
    assert event is not None
    assert event.action == "rollback"
    assert event.seq == 3


def test_only_rejects_no_champion(log):
    record(log, "ladnn", "reject", "1")
    assert log.last_champion_event("ladnn") is None


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/workspace/mlflow/mlflow.db",
        "postgresql://postgres@127.0.0.1:5432/mlflow",
        "postgresql+psycopg2://postgres@127.0.0.1/mlflow",
    ],
)
def test_database_url_is_tracking_uri(uri):
    assert audit_database_url(uri) == uri


def test_audit_uri_wins():
    audit = "postgresql://postgres@127.0.0.1/audit"
    assert audit_database_url("http://127.0.0.1:5000", audit) == audit
    assert audit_database_url("sqlite:///mlflow.db", audit) == audit


def test_server_uri_needs_audit_uri():
    with pytest.raises(ValueError, match="tracking.audit_uri"):
        audit_database_url("http://127.0.0.1:5000")
