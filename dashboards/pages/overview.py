"""Overview: champion and challenger, dataset growth, recent Prefect flow runs, retraining."""

from __future__ import annotations

import logging

import httpx
import streamlit as st

from dashboards import data, ui
from dashboards.orchestration import PrefectUnavailable, prefect_api_url, recent_flow_runs
from dashboards.retrain_panel import retrain_panel

logger = logging.getLogger("ladnn.dashboard")

current = ui.settings()
user = ui.require_user(current)
registry = ui.registry(current)

st.title("Overview")
st.caption(f"Registered model `{registry.name}` in {current.tracking_uri}")

columns = st.columns(2)
for column, role, version in (
    (columns[0], "Champion", registry.champion()),
    (columns[1], "Challenger", registry.challenger()),
):
    with column, st.container(border=True):
        if version is None:
            st.subheader(f"{role}: none")
            st.caption(f"No version has the alias `{role.lower()}`.")
            continue
        summary = data.version_summary(registry.client, registry.name, version)
        st.subheader(f"{role}: version {version}")
        low, high = summary.test_auc_ci
        metric_columns = st.columns(3)
        metric_columns[0].metric(
            "Test AUC",
            ui.format_number(summary.test_auc),
            help="ROC AUC on the official test split at registration",
        )
        metric_columns[0].caption(f"95% CI {ui.format_number(low)} to {ui.format_number(high)}")
        metric_columns[1].metric("Sensitivity", ui.format_number(summary.sensitivity))
        metric_columns[2].metric("Specificity", ui.format_number(summary.specificity))
        st.caption(
            f"{summary.variant} on {summary.backbone}, dataset {summary.dataset_version}; "
            f"gates {summary.gate_state}, review {summary.review_state or 'n/a'}; "
            f"registered {summary.created_at} UTC"
        )

st.header("Dataset growth")
growth = data.dataset_growth(current.workspace)
if growth.empty:
    st.info("No dataset version is recorded yet: import data with `ladnn import release`.")
else:
    by_label, by_split = st.columns(2)
    by_label.bar_chart(
        data.growth_long(growth, ["COVID", "negative"], "label"),
        x="version",
        y="images",
        color="label",
    )
    by_split.bar_chart(
        data.growth_long(growth, ["train", "val", "test"], "split"),
        x="version",
        y="images",
        color="split",
    )
    st.dataframe(growth, hide_index=True)

st.header("Flow runs")
if prefect_api_url() is None:
    st.info(
        "Prefect flow runs are not shown because PREFECT_API_URL is not set. Start a server with "
        "`prefect server start` and restart the dashboard with PREFECT_API_URL exported."
    )
else:
    try:
        runs = recent_flow_runs()
    except (PrefectUnavailable, httpx.HTTPError) as err:
        logger.warning("reading Prefect flow runs failed: %s", err)
        st.warning(f"Prefect flow runs are not available: {err}")
    else:
        if runs.empty:
            st.caption("No flow runs yet.")
        else:
            st.dataframe(runs, hide_index=True)

retrain_panel(user)
