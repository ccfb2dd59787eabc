"""Runs: the backbone tables of `ladnn reproduce`, and training runs from MLflow, filterable by
backbone and variant, with per-epoch curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import data, ui
from dashboards.charts import history_chart
from ladnn.reproduce import runs as reproduce_runs

current = ui.settings()
user = ui.require_user(current)
client = ui.registry(current).client
experiment = current.cfg.tracking.experiment

st.title("Runs")
st.caption(f"MLflow experiment `{experiment}` in {current.tracking_uri}")
runs = data.runs_frame(client, experiment)
if runs.empty:
    st.info("No training run is logged yet: train one with `ladnn train` or `ladnn cycle`.")
    st.stop()

st.header("Backbone tables")
reproduced = reproduce_runs.list_reproduce_runs(client, experiment)
if reproduced.empty:
    st.caption("No backbone table is logged yet: run `ladnn reproduce`.")
else:
    table_run = st.selectbox(
        "Reproduce run",
        reproduced["run id"].tolist(),
        format_func=lambda run_id: (
            f"{reproduced.set_index('run id').loc[run_id, 'name']} ({run_id[:8]}, "
            f"{reproduced.set_index('run id').loc[run_id, 'status'].lower()})"
        ),
        key="runs_table",
    )
    markdown = reproduce_runs.load_table_markdown(client, table_run)
    if markdown is None:
        st.caption("This run has not logged its table yet (still training, or it failed).")
    else:
        st.markdown(markdown)

st.header("Training runs")
left, right = st.columns(2)
backbones = left.multiselect("Backbone", sorted(runs["backbone"].unique()), key="runs_backbone")
variants = right.multiselect("Variant", sorted(runs["variant"].unique()), key="runs_variant")
runs = data.runs_frame(client, experiment, backbones=backbones, variants=variants)
if runs.empty:
    st.caption("No run matches these filters.")
    st.stop()
st.dataframe(data.display_frame(runs), hide_index=True)

st.header("Training curves")
chosen = st.multiselect(
    "Runs to plot",
    runs["run id"].tolist(),
    default=runs["run id"].tolist()[:3],
    format_func=lambda run_id: f"{runs.set_index('run id').loc[run_id, 'name']} ({run_id[:8]})",
    key="runs_plotted",
)
histories = []
for run_id in chosen:
    history = data.epoch_history(client, run_id)
    history["run"] = runs.set_index("run id").loc[run_id, "name"]
    histories.append(history)
if histories:
    combined = pd.concat(histories, ignore_index=True)
    metrics = sorted(combined["metric"].unique())
    for start in range(0, len(metrics), 2):
        for column, metric in zip(st.columns(2), metrics[start : start + 2], strict=False):
            column.subheader(metric.removeprefix("epoch_"))
            column.altair_chart(
                history_chart(combined[combined["metric"] == metric]), width="stretch"
            )
