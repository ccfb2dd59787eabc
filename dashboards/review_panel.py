"""Reviewer actions: approve or reject a version, and roll the champion back.

Each action takes two steps. The first button checks the reason and shows what will happen. The
decision is applied only after the reviewer ticks the confirmation and presses the second button.
The panels render no action widgets for analysts.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboards.auth import User
from ladnn.registry.audit import ConcurrentReviewError
from ladnn.registry.review import Registry, ReviewError
from ladnn.registry.waiting import resume_waiting_review, waiting_run

__all__ = ["decision_panel", "rollback_panel", "show_flash"]

logger = logging.getLogger("ladnn.dashboard")

_FLASH_KEY = "ladnn_review_flash"


def show_flash() -> None:
    """Show the outcome of the decision applied in the previous run, once."""
    flash = st.session_state.pop(_FLASH_KEY, None)
    if flash is None:
        return
    kind, message = flash
    (st.success if kind == "success" else st.error)(message)


def _event_text(event) -> str:
    """Describe a recorded decision, e.g. "Audit event #2: rita promoted version 2 ..."."""
    if event.action == "reject":
        change = f"rejected version {event.to_version}"
    elif event.action == "rollback":
        change = (
            f"rolled the champion back from version {event.from_version} "
            f"to version {event.to_version}"
        )
    else:
        replaced = f", replacing version {event.from_version}" if event.from_version else ""
        change = f"promoted version {event.to_version} to champion{replaced}"
    override = " (gate override recorded)" if event.details.get("override") else ""
    return f"Audit event #{event.seq}: {event.reviewer} {change}{override}."


def _apply(pending_key: str, action, *args, **kwargs) -> None:
    try:
        event = action(*args, **kwargs)
    except (ReviewError, ConcurrentReviewError) as err:
        st.session_state[_FLASH_KEY] = ("error", f"The decision was not applied: {err}")
        logger.warning("review decision failed: %s", err)
    else:
        message = _event_text(event)
        if event.action in ("promote", "reject"):
            resumed = resume_waiting_review(action.__self__, event.to_version, event)
            if resumed:
                message += f" The review flow run {resumed} that waited for it was resumed."
        st.session_state[_FLASH_KEY] = ("success", message)
    st.session_state.pop(pending_key, None)
    st.rerun()


def _confirm_step(prefix: str, pending_key: str, summary: str) -> bool:
    """Show the pending decision; return True when the reviewer confirmed it."""
    st.warning(summary)
    confirmed = st.checkbox(
        "I have checked this decision and want to apply it", key=f"{prefix}_confirm_check"
    )
    left, right = st.columns(2)
    apply = left.button(
        "Confirm decision", key=f"{prefix}_confirm", type="primary", disabled=not confirmed
    )
    if right.button("Cancel", key=f"{prefix}_cancel"):
        st.session_state.pop(pending_key, None)
        st.rerun()
    return apply and confirmed


def decision_panel(registry: Registry, user: User | None, version: str | None, prefix: str) -> None:
    """Approve or reject `version` (default: the challenger) as the signed-in reviewer."""
    if user is None or not user.is_reviewer:
        st.caption("Only reviewers can approve or reject versions; you have read-only access.")
        return
    champion = registry.champion()
    if version is None:
        st.caption("There is no challenger to decide on.")
        return
    if version == champion:
        st.caption(f"Version {version} is the champion.")
        return
    tags = registry.client.get_model_version(registry.name, version).tags
    gates_passed = tags.get("gate_state") == "passed"
    waiting = waiting_run(registry, version)
    if waiting is not None:
        st.info(
            f"Review flow run {waiting[0]} is paused until this decision; deciding here resumes it."
        )
    pending_key = f"{prefix}_pending"
    pending = st.session_state.get(pending_key)

    if pending is None or pending["version"] != version:
        reason = st.text_area(
            f"Reason for the decision on version {version} (required, kept in the audit log)",
            key=f"{prefix}_reason",
        )
        override = False
        if not gates_passed:
            state = tags.get("gate_state", "not evaluated")
            st.warning(f"The gates of version {version} are {state}.")
            override = st.checkbox(
                "Approve although the gates did not pass (the override is recorded)",
                key=f"{prefix}_override",
            )
        left, right = st.columns(2)
        approve = left.button(f"Approve version {version}", key=f"{prefix}_approve")
        reject = right.button(f"Reject version {version}", key=f"{prefix}_reject")
        if approve or reject:
            if not reason.strip():
                st.error("Enter a reason before deciding.")
            else:
                st.session_state[pending_key] = {
                    "action": "approve" if approve else "reject",
                    "version": version,
                    "reason": reason.strip(),
                    "override": override,
                }
                st.rerun()
        return

    if pending["action"] == "approve":
        replaced = f"replacing version {champion}" if champion else "as the first champion"
        summary = (
            f"Approve version {version} as champion, {replaced}"
            f"{' with a gate override' if pending['override'] else ''}. "
            f"Reason: {pending['reason']}"
        )
    else:
        summary = f"Reject version {version}. Reason: {pending['reason']}"
    if _confirm_step(prefix, pending_key, summary):
        if pending["action"] == "approve":
            _apply(
                pending_key,
                registry.promote,
                version,
                reviewer=user.name,
                reason=pending["reason"],
                override=pending["override"],
            )
        else:
            _apply(
                pending_key, registry.reject, version, reviewer=user.name, reason=pending["reason"]
            )


def rollback_panel(registry: Registry, user: User | None, prefix: str) -> None:
    """Move the champion back to the version it replaced, as the signed-in reviewer."""
    if user is None or not user.is_reviewer:
        return
    event = registry.audit.last_champion_event(registry.name)
    if event is None or event.from_version is None:
        st.caption("There is no earlier champion to roll back to.")
        return
    pending_key = f"{prefix}_pending"
    if st.session_state.get(pending_key) is None:
        reason = st.text_input("Reason for the rollback (required)", key=f"{prefix}_reason")
        if st.button(f"Roll back to version {event.from_version}", key=f"{prefix}_rollback"):
            if not reason.strip():
                st.error("Enter a reason before rolling back.")
            else:
                st.session_state[pending_key] = {"reason": reason.strip()}
                st.rerun()
        return
    reason = st.session_state[pending_key]["reason"]
    summary = (
        f"Roll the champion back from version {event.to_version} to version "
        f"{event.from_version}. Reason: {reason}"
    )
    if _confirm_step(prefix, pending_key, summary):
        _apply(pending_key, registry.rollback, reviewer=user.name, reason=reason)
