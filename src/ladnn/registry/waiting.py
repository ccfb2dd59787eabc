"""Review flow runs that wait for a reviewer's decision on a model version.

The `review` flow, when asked to wait, tags the version it proposes with its Prefect flow run id
(and the API it runs against) and pauses. A reviewer's decision recorded anywhere else (CLI or
dashboard) then resumes that run with the audit event, so the flow finishes with the decision
instead of waiting for its timeout. A run resumed from the Prefect UI applies the decision itself.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

from ladnn.registry.audit import AuditEvent
from ladnn.registry.review import Registry

__all__ = [
    "WAITING_RUN_TAG",
    "WAITING_API_TAG",
    "mark_waiting",
    "clear_waiting",
    "waiting_run",
    "resume_waiting_review",
]

logger = logging.getLogger(__name__)

WAITING_RUN_TAG = "review_flow_run"
WAITING_API_TAG = "review_prefect_api"

# Seconds a decision waits for a review run that has tagged its version but not yet paused.
_PAUSE_ATTEMPTS = 15


def mark_waiting(registry: Registry, version: str, flow_run_id: str, api_url: str | None) -> None:
    """Record that flow run `flow_run_id` waits for the decision on `version`."""
    registry.client.set_model_version_tag(registry.name, version, WAITING_RUN_TAG, flow_run_id)
    if api_url:
        registry.client.set_model_version_tag(registry.name, version, WAITING_API_TAG, api_url)


def clear_waiting(registry: Registry, version: str) -> None:
    tags = registry.client.get_model_version(registry.name, version).tags
    for tag in (WAITING_RUN_TAG, WAITING_API_TAG):
        if tag in tags:
            registry.client.delete_model_version_tag(registry.name, version, tag)


def waiting_run(registry: Registry, version: str) -> tuple[str, str | None] | None:
    """Return the flow run id (and its Prefect API address) waiting for a decision on `version`."""
    tags = registry.client.get_model_version(registry.name, version).tags
    if WAITING_RUN_TAG not in tags:
        return None
    return tags[WAITING_RUN_TAG], tags.get(WAITING_API_TAG)


def decision_input(event: AuditEvent) -> dict:
    """Build the `ReviewDecision` input that reports a recorded decision to a paused review run."""
    return {
        "approve": event.action == "promote",
        "reviewer": event.reviewer,
        "reason": event.reason,
        "override": bool(event.details.get("override")),
        "audit_seq": event.seq,
    }


def resume_waiting_review(registry: Registry, version: str, event: AuditEvent) -> str | None:
    """Resume the review flow run waiting on `version` with the recorded `event`.

    Returns the resumed flow run id, or None when no run waits or the server cannot be reached.
    The recorded decision is kept either way.
    """
    waiting = waiting_run(registry, version)
    if waiting is None:
        return None
    flow_run_id, api_url = waiting
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: api_url} if api_url else {}
    try:
        with temporary_settings(updates=updates):
            # The run tags the version just before it pauses, so it may not be paused yet.
            for attempt in range(_PAUSE_ATTEMPTS):
                try:
                    resume_flow_run(UUID(flow_run_id), run_input=decision_input(event))
                    break
                except NotPausedError:
                    if attempt == _PAUSE_ATTEMPTS - 1:
                        raise
                    time.sleep(1)
    except (NotPausedError, FlowPauseTimeout, ObjectNotFound) as err:
        logger.warning("review flow run %s is no longer paused: %s", flow_run_id, err)
        clear_waiting(registry, version)
        return None
    except Exception as err:  # noqa: BLE001 - an unreachable server raises httpx's many errors
        logger.warning(
            "failed to resume review flow run %s at %s: %s; resume it in the Prefect UI",
            flow_run_id,
            api_url or "the default Prefect API",
            err,
        )
        return None
    logger.info("resumed review flow run %s with decision #%d", flow_run_id, event.seq)
    return flow_run_id
