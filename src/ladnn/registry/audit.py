"""Append-only audit log of review decisions, in a table beside MLflow's own tables.

Every event of a registered model gets the next sequence number, and `(model_name, seq)` is unique,
so when two reviewers act at once exactly one insert succeeds: the log is also the lock that keeps
promotions consistent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

__all__ = ["AuditEvent", "AuditLog", "ConcurrentReviewError", "audit_database_url"]

logger = logging.getLogger(__name__)

_METADATA = sa.MetaData()
_EVENTS = sa.Table(
    "ladnn_audit_events",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(32)),
    sa.Column("to_version", sa.String(32)),
    sa.Column("reviewer", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("comparison", sa.Text),
    sa.Column("details", sa.Text),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("model_name", "seq", name="uq_ladnn_audit_model_seq"),
)

# Actions that move the `champion` alias.
CHAMPION_ACTIONS = ("promote", "rollback")


class ConcurrentReviewError(RuntimeError):
    """Another review decision on the same model was recorded first."""


@dataclass(frozen=True)
class AuditEvent:
    model_name: str
    seq: int
    action: str
    from_version: str | None
    to_version: str | None
    reviewer: str
    reason: str
    comparison: str | None
    details: dict
    created_at: str

    def as_dict(self) -> dict:
        return asdict(self)


def audit_database_url(tracking_uri: str, audit_uri: str = "") -> str:
    """Return the audit log's database URL: the tracking store's own, unless `audit_uri` names another."""
    if audit_uri:
        return audit_uri
    if tracking_uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return tracking_uri
    raise ValueError(
        f"tracking URI {tracking_uri!r} is not a database, so the audit log needs its own: set "
        "tracking.audit_uri to a SQLAlchemy URL (e.g. postgresql+psycopg2://host/ladnn)"
    )


class AuditLog:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        _METADATA.create_all(self.engine, checkfirst=True)

    def events(self, model_name: str | None = None) -> list[AuditEvent]:
        query = sa.select(_EVENTS).order_by(_EVENTS.c.model_name, _EVENTS.c.seq)
        if model_name is not None:
            query = query.where(_EVENTS.c.model_name == model_name)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            AuditEvent(
                model_name=row["model_name"],
                seq=row["seq"],
                action=row["action"],
                from_version=row["from_version"],
                to_version=row["to_version"],
                reviewer=row["reviewer"],
                reason=row["reason"],
                comparison=row["comparison"],
                details=json.loads(row["details"] or "{}"),
                created_at=row["created_at"],
            )
            for row in rows
        ]

    def last_seq(self, model_name: str) -> int:
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(sa.func.max(_EVENTS.c.seq)).where(_EVENTS.c.model_name == model_name)
            ).scalar()
        return int(value or 0)

    def append(
        self,
        *,
        model_name: str,
        expected_seq: int,
        action: str,
        reviewer: str,
        reason: str,
        from_version: str | None = None,
        to_version: str | None = None,
        comparison: str | None = None,
        details: dict | None = None,
    ) -> AuditEvent:
        """Record an event as number `expected_seq + 1`; raise if another event took that number."""
        event = AuditEvent(
            model_name=model_name,
            seq=expected_seq + 1,
            action=action,
            from_version=from_version,
            to_version=to_version,
            reviewer=reviewer,
            reason=reason,
            comparison=comparison,
            details=details or {},
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        values = event.as_dict() | {"details": json.dumps(event.details, sort_keys=True)}
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(_EVENTS).values(**values))
        except OperationalError as err:
            if "locked" not in str(err).lower():
                raise
            raise ConcurrentReviewError(
                f"another review decision on {model_name} is being recorded (database locked); "
                "try again in a moment"
            ) from err
        except IntegrityError as err:
            raise ConcurrentReviewError(
                f"another review decision on {model_name} was recorded at the same time "
                f"(event {event.seq}); reload the registry state and decide again"
            ) from err
        logger.info(
            "audit %s #%d: %s %s -> %s by %s",
            model_name,
            event.seq,
            action,
            from_version,
            to_version,
            reviewer,
        )
        return event

    def last_champion_event(self, model_name: str) -> AuditEvent | None:
        champion_events = [e for e in self.events(model_name) if e.action in CHAMPION_ACTIONS]
        return champion_events[-1] if champion_events else None
