"""Compare: the stored comparison report of a candidate against the champion it was compared with,
curves and confusion matrices on the frozen test images, calibration and Grad-CAM++ overlays."""

from __future__ import annotations

import json
import logging

import pandas as pd
import streamlit as st
from mlflow.exceptions import MlflowException

from dashboards import cached, data, ui
from dashboards.charts import calibration_chart, curve_chart
from dashboards.review_panel import decision_panel, show_flash
from dashboards.scoring import calibration_frame, confusion_frame, pr_points, roc_points
from ladnn.evaluation.explain import select_explained_images

REGRESSION_STYLE = "background-color: rgba(255, 75, 75, 0.25)"
logger = logging.getLogger("ladnn.dashboard")


def highlight_regressions(frame: pd.DataFrame):
    """Style the rows where the candidate is worse than the champion."""
    shown = data.display_frame(frame)
    if "regression" not in frame.columns:
        return shown
    return shown.style.apply(
        lambda row: [REGRESSION_STYLE if row["regression"] else ""] * len(row), axis=1
    )


def show_report(report: dict) -> None:
    st.header("Metrics")
    metrics = data.comparison_metrics_frame(report)
    st.dataframe(data.display_frame(metrics), hide_index=True)
    if report.get("delong"):
        delong = report["delong"]
        st.write(
            f"DeLong test of the AUC difference: z = {delong['z']:.2f}, p = {delong['p_value']:.4f}"
        )

    st.header("Gates")
    for gate in report["gates"]:
        mark = ":green[PASS]" if gate["passed"] else ":red[FAIL]"
        st.markdown(f"- {mark} `{gate['name']}`: {gate['detail']}")

    st.header("Per batch, source and negative subtype")
    st.caption(
        "Each cell gives the value and its 95% bootstrap interval over patients. Rows where the "
        "candidate's AUC or accuracy is below the champion's are highlighted."
    )
    for title, rows in (
        ("Per batch", report["per_batch"]),
        ("Per source (sources under 10 test images together)", report["per_source"]),
        ("COVID against each negative subtype", report.get("per_subtype", [])),
    ):
        st.subheader(title)
        st.dataframe(highlight_regressions(data.slice_frame(rows)), hide_index=True)


def show_scores(current, report: dict) -> None:
    """Curves, confusion matrices, calibration and Grad-CAM++ of both models, scored here."""
    st.header("Curves on the frozen test images")
    champion = report["champion"]
    versions = (report["candidate"], *([champion] if champion else []))
    try:
        scored = cached.test_scores(current, versions)
    except (MlflowException, OSError, ValueError) as err:
        logger.warning("scoring versions %s failed: %s", versions, err)
        st.error(f"Could not score versions {', '.join(versions)} on the test images: {err}")
        return
    y = scored.labels
    labels = {
        version: f"v{version} ({'candidate' if version == report['candidate'] else 'champion'})"
        for version in versions
    }

    roc_column, pr_column = st.columns(2)
    roc_column.subheader("ROC")
    roc_curves = {labels[v]: roc_points(y, scored.covid(v)) for v in versions}
    roc_column.altair_chart(
        curve_chart(roc_curves, "false positive rate", "true positive rate", diagonal=True),
        width="stretch",
    )
    pr_column.subheader("Precision-recall")
    pr_curves = {labels[v]: pr_points(y, scored.covid(v)) for v in versions}
    pr_column.altair_chart(
        curve_chart(pr_curves, "recall", "precision", diagonal=False), width="stretch"
    )

    st.subheader("Confusion matrices at each model's frozen threshold")
    for column, version in zip(st.columns(len(versions)), versions, strict=True):
        threshold = scored.thresholds[version]
        column.markdown(f"**{labels[version]}**, threshold {threshold:.3f}")
        column.dataframe(confusion_frame(y, scored.covid(version), threshold))

    st.subheader("Calibration")
    bins = {labels[v]: calibration_frame(y, scored.covid(v)) for v in versions}
    st.altair_chart(calibration_chart(bins), width="stretch")

    st.header("Grad-CAM++ on the same test images")
    st.caption("Heat maps of the COVID-19 output: red areas raised the COVID-19 score most.")
    for row in select_explained_images(scored.frame, per_label=2).itertuples(index=False):
        kind = "COVID" if row.label == 1 else "negative"
        index = int(scored.frame.index[scored.frame["image_id"] == row.image_id][0])
        columns = st.columns(1 + len(versions))
        columns[0].image(
            str(current.store.image_path(row.image_id)), caption=f"{row.file_name} ({kind})"
        )
        for column, version in zip(columns[1:], versions, strict=True):
            caption = f"{labels[version]}: P(COVID) {scored.covid(version)[index]:.3f}"
            column.image(cached.overlays(current, version, row.image_id), caption=caption)


current = ui.settings()
user = ui.require_user(current)
registry = ui.registry(current)
st.title("Compare")
show_flash()

compared = [
    str(item.version)
    for item in registry.client.search_model_versions(f"name = '{registry.name}'")
    if item.tags.get("comparison_uri")
]
compared.sort(key=int, reverse=True)
if not compared:
    st.info("No version has a comparison report yet: run `ladnn compare VERSION`.")
    st.stop()
challenger = registry.challenger()
candidate = st.selectbox(
    "Candidate version",
    compared,
    index=compared.index(challenger) if challenger in compared else 0,
    format_func=lambda v: f"version {v}" + (" (challenger)" if v == challenger else ""),
)
try:
    report = cached.comparison(current, candidate)
except (MlflowException, OSError, json.JSONDecodeError) as err:
    logger.warning("reading the comparison report of version %s failed: %s", candidate, err)
    st.error(f"Could not read the comparison report of version {candidate}: {err}")
    st.stop()

against = f"version {report['champion']}" if report["champion"] else "no champion"
st.write(
    f"Version **{report['candidate']}** against **{against}** on {report['n_images']} frozen "
    f"test images from {report['n_patients']} patients that neither model trained on."
)
show_report(report)
show_scores(current, report)

st.header("Decision")
decision_panel(registry, user, candidate, prefix="compare")
