"""Review: registry state, the decision on the challenger, rollback and the audit log."""

from __future__ import annotations

import streamlit as st

from dashboards import data, ui
from dashboards.review_panel import decision_panel, rollback_panel, show_flash

current = ui.settings()
user = ui.require_user(current)
registry = ui.registry(current)

st.title("Review")
show_flash()
champion, challenger = registry.champion(), registry.challenger()
left, right = st.columns(2)
left.metric("Champion", f"version {champion}" if champion else "none")
right.metric("Challenger", f"version {challenger}" if challenger else "none")
if not user.is_reviewer:
    st.info(f"Signed in as {user.name} ({user.role}): read-only access.")

st.header("Decision on the challenger")
st.caption(
    "The Compare page shows the evidence: metrics with intervals, gates, slices and heat maps."
)
decision_panel(registry, user, challenger, prefix="review")

if user.is_reviewer:
    st.header("Rollback")
    rollback_panel(registry, user, prefix="rollback")

st.header("Registered versions")
versions = data.model_versions_frame(registry)
if versions.empty:
    st.caption("No version is registered yet.")
else:
    st.dataframe(data.display_frame(versions), hide_index=True)

st.header("Audit log")
audit = data.audit_frame(registry)
if audit.empty:
    st.caption("No review decision is recorded yet.")
else:
    st.dataframe(audit, hide_index=True)
