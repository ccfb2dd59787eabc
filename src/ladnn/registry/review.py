"""Champion and challenger: reviewer decisions that move MLflow aliases, recorded in the audit log.

The audit log is the commit point. A promotion first appends its event (which fails when another
decision was recorded concurrently), then moves the `champion` alias. If the process dies between
the two, `reconcile` (run before every decision and listing) moves the alias to the version the log records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ladnn.registry.audit import AuditEvent, AuditLog

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "ReviewError",
    "Registry",
]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


class ReviewError(ValueError):
    """A review decision that the registry state does not allow."""


@dataclass
class Registry:
    client: MlflowClient
    audit: AuditLog
    name: str

    def _alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def champion(self) -> str | None:
        return self._alias(CHAMPION)

    def challenger(self) -> str | None:
        return self._alias(CHALLENGER)

    def _version(self, version: str):
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise ReviewError(f"model {self.name} has no version {version}") from None

    def require_version(self, version: str) -> None:
        """Raise `ReviewError` unless the registered model has `version`."""
        self._version(version)

    def reconcile(self) -> None:
        """Make the `champion` alias agree with the last champion event of the audit log."""
        event = self.audit.last_champion_event(self.name)
        if event is None:
            return
        if self.champion() != event.to_version:
            logger.warning(
                "champion alias of %s was %s but the audit log records %s (event %d); repairing the alias",
                self.name,
                self.champion(),
                event.to_version,
                event.seq,
            )
            self.client.set_registered_model_alias(self.name, CHAMPION, event.to_version)

    def propose(self, version: str) -> None:
        """Mark a candidate as the challenger under review."""
        self._version(version)
        self.client.set_registered_model_alias(self.name, CHALLENGER, str(version))

    def _move_champion(
        self,
        *,
        action: str,
        target: str,
        reviewer: str,
        reason: str,
        comparison: str | None,
        details: dict,
        expected: int,
    ) -> AuditEvent:
        # The log, not the alias, names the current champion: another process may have recorded
        # a promotion whose alias move has not happened yet.
        last = self.audit.last_champion_event(self.name)
        previous = last.to_version if last is not None else self.champion()
        event = self.audit.append(
            model_name=self.name,
            expected_seq=expected,
            action=action,
            from_version=previous,
            to_version=target,
            reviewer=reviewer,
            reason=reason,
            comparison=comparison,
            details=details,
        )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.set_registered_model_alias(self.name, CHAMPION, target)
        self.client.set_model_version_tag(self.name, target, "review_state", "approved")
        self.client.set_model_version_tag(self.name, target, "champion_since", now)
        # A version that is champion again after a rollback or a new promotion is no longer
        # superseded.
        target_tags = self.client.get_model_version(self.name, target).tags
        for tag in ("superseded_by", "superseded_at"):
            if tag in target_tags:
                self.client.delete_model_version_tag(self.name, target, tag)
        if previous is not None and previous != target:
            self.client.set_model_version_tag(self.name, previous, "superseded_by", target)
            self.client.set_model_version_tag(self.name, previous, "superseded_at", now)
        if self.challenger() == target:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        # A decision recorded after this one may have moved the alias first; the log wins.
        self.reconcile()
        return event

    def promote(
        self, version: str, *, reviewer: str, reason: str, override: bool = False
    ) -> AuditEvent:
        """Make `version` the champion after a reviewer's approval.

        A version whose gates failed, that has no comparison, whose comparison is not against the
        current champion, or that was rejected needs `override=True`, which the audit record keeps.
        """
        _require_reviewer(reviewer, reason)
        self.reconcile()
        # Decisions are checked against the log as it was when this one started, so a decision
        # recorded meanwhile by someone else makes this one fail instead of silently stacking.
        expected = self.audit.last_seq(self.name)
        model_version = self._version(version)
        tags = model_version.tags
        if self.champion() == str(version):
            raise ReviewError(f"version {version} of {self.name} is already the champion")
        problems = []
        if tags.get("gate_state") != "passed":
            problems.append(
                f"its gates are {tags.get('gate_state', 'not evaluated (run ladnn compare)')}"
            )
        compared_with = tags.get("compared_with")
        current = self.champion() or "none"
        if compared_with is not None and compared_with != current:
            now = "there is no champion now" if current == "none" else f"the champion is {current}"
            problems.append(
                f"it was compared with {_version_text(compared_with)}, but {now} "
                f"(run `ladnn compare {version}` again)"
            )
        if tags.get("review_state") == "rejected":
            problems.append("it was rejected")
        if problems and not override:
            raise ReviewError(
                f"version {version} cannot be promoted: {'; '.join(problems)}. Use --override to "
                "promote it anyway; the override is recorded in the audit log"
            )
        return self._move_champion(
            action="promote",
            target=str(version),
            reviewer=reviewer,
            reason=reason,
            comparison=tags.get("comparison_uri"),
            details={"override": bool(problems) and override, "problems": problems},
            expected=expected,
        )

    def reject(self, version: str, *, reviewer: str, reason: str) -> AuditEvent:
        _require_reviewer(reviewer, reason)
        self.reconcile()
        expected = self.audit.last_seq(self.name)
        model_version = self._version(version)
        if self.champion() == str(version):
            raise ReviewError(f"version {version} is the champion; use rollback to replace it")
        event = self.audit.append(
            model_name=self.name,
            expected_seq=expected,
            action="reject",
            from_version=self.champion(),
            to_version=str(version),
            reviewer=reviewer,
            reason=reason,
            comparison=model_version.tags.get("comparison_uri"),
        )
        self.client.set_model_version_tag(self.name, str(version), "review_state", "rejected")
        if self.challenger() == str(version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return event

    def rollback(self, *, reviewer: str, reason: str) -> AuditEvent:
        """Move `champion` back to the version it replaced.

        Rollbacks walk back through the promotions: after a rollback from B to A, the next one
        goes to the champion before A, never forward to B again.
        """
        _require_reviewer(reviewer, reason)
        self.reconcile()
        expected = self.audit.last_seq(self.name)
        target = self._rollback_target()
        if target is None:
            raise ReviewError(f"model {self.name} has no earlier champion to roll back to")
        current = self.champion()
        return self._move_champion(
            action="rollback",
            target=target,
            reviewer=reviewer,
            reason=reason,
            comparison=None,
            details={"replaced": current},
            expected=expected,
        )

    def _rollback_target(self) -> str | None:
        """Return the champion before the current one, skipping versions that were rolled back."""
        history: list[str | None] = []
        for event in self.audit.events(self.name):
            if event.action == "promote":
                history.append(event.to_version)
            elif event.action == "rollback" and history:
                history.pop()
        if len(history) < 2:
            first = self.audit.last_champion_event(self.name)
            if (
                first is not None
                and len(history) == 1
                and first.from_version not in (None, history[0])
            ):
                return first.from_version
            return None
        return history[-2]


def _version_text(version: str) -> str:
    return "no champion" if version == "none" else f"version {version}"


def _require_reviewer(reviewer: str, reason: str) -> None:
    if not reviewer.strip():
        raise ReviewError("a reviewer name is required")
    if not reason.strip():
        raise ReviewError("a reason is required")
