"""The retraining button: it starts a run of the Prefect deployment `retrain/retrain`.

Training can take hours, so it never runs inside the dashboard process; a Prefect worker serving the
deployment (`ladnn flows serve`) runs it and the dashboard shows the flow run's state.
"""

from __future__ import annotations

import logging

import httpx
import streamlit as st

from dashboards.auth import User
from dashboards.orchestration import (
    RETRAIN_DEPLOYMENT,
    PrefectUnavailable,
    active_retrain_runs,
    flow_run_state,
    prefect_api_url,
    start_retrain,
)

__all__ = ["retrain_panel"]

logger = logging.getLogger("ladnn.dashboard")

_RUN_KEY = "ladnn_retrain_flow_run"
# Seconds between reads of the started flow run's state.
REFRESH_SECONDS = 10


def retrain_panel(user: User) -> None:
    st.subheader("Retraining")
    if not user.is_reviewer:
        st.caption("Reviewers can start a retraining run here; you have read-only access.")
        return
    url = prefect_api_url()
    if url is None:
        st.button(
            "Start retraining",
            key="retrain_start",
            disabled=True,
            help="Set PREFECT_API_URL and serve the flows with `ladnn flows serve` first.",
        )
        st.caption(
            f"Retraining runs as the Prefect deployment `{RETRAIN_DEPLOYMENT}`, not inside the "
            "dashboard. PREFECT_API_URL is not set for this dashboard, so it cannot start one: "
            "start `prefect server start` and `ladnn flows serve`, then restart the dashboard "
            "with PREFECT_API_URL exported."
        )
        return
    st.caption(
        f"Starts a run of the Prefect deployment `{RETRAIN_DEPLOYMENT}` at {url}; a worker serving "
        "it (`ladnn flows serve`) trains and registers the candidates."
    )
    try:
        active = active_retrain_runs()
    except (PrefectUnavailable, httpx.HTTPError, ValueError) as err:
        st.warning(f"Could not read the runs of {RETRAIN_DEPLOYMENT}: {err}")
        return
    allowed = True
    if active:
        listed = ", ".join(f"{run.name} ({run.state})" for run in active)
        st.warning(
            f"Retraining is already under way: {listed}. Another run would train the same "
            "settings on the same data again."
        )
        allowed = st.checkbox("Start another run anyway", key="retrain_another")
    if st.button("Start retraining", key="retrain_start", disabled=not allowed):
        try:
            state = start_retrain()
        except (PrefectUnavailable, httpx.HTTPError, ValueError) as err:
            st.error(f"Could not start deployment {RETRAIN_DEPLOYMENT}: {err}")
            logger.warning("starting %s failed: %s", RETRAIN_DEPLOYMENT, err)
        else:
            st.session_state[_RUN_KEY] = state.flow_run_id
            logger.info("user %s started flow run %s", user.name, state.flow_run_id)
    flow_run_id = st.session_state.get(_RUN_KEY)
    if flow_run_id is not None:
        _run_state(flow_run_id)


@st.fragment(run_every=REFRESH_SECONDS)
def _run_state(flow_run_id: str) -> None:
    """Show the state of the started flow run; only this part of the page reruns to refresh it."""
    try:
        state = flow_run_state(flow_run_id)
    except (PrefectUnavailable, httpx.HTTPError, ValueError) as err:
        st.warning(f"Could not read the state of flow run {flow_run_id}: {err}")
        return
    st.info(f"Flow run {state.name} ({state.flow_run_id}): {state.state}. {state.message}".strip())
    st.caption(f"Refreshed every {REFRESH_SECONDS} s.")
