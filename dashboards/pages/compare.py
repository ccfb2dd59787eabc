"""Compare: the stored comparison report of a candidate against the champion it was compared with,
curves and confusion matrices on the frozen test images, calibration and Grad-CAM++ overlays."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import cached, data, ui
from dashboards.charts import calibration_chart, curve_chart
from dashboards.review_panel import decision_panel, show_flash
from dashboards.scoring import calibration_frame, confusion_frame, pr_points, roc_points
from ladnn.evaluation.explain import select_explained_images

REGRESSION_STYLE = "background-color: rgba(255, 75, 75, 0.25)"

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
default = compared.index(challenger) if challenger in compared else 0
candidate = st.selectbox(
    "Candidate version",
    compared,
    index=default,
    format_func=lambda v: f"version {v}" + (" (challenger)" if v == challenger else ""),
)
report = cached.comparison(current, candidate)
champion = report["champion"]
against = f"version {champion}" if champion else "no champion"
st.write(
    f"Version **{report['candidate']}** against **{against}** on {report['n_images']} frozen "
    f"test images from {report['n_patients']} patients that neither model trained on."
)


def highlight_regressions(frame: pd.DataFrame):
    """Style the rows where the candidate is worse than the champion."""
    if "regression" not in frame.columns:
        return frame.style.format(precision=3, na_rep="n/a")
    return frame.style.apply(
        lambda row: [REGRESSION_STYLE if row["regression"] else ""] * len(row), axis=1
    ).format(precision=3, na_rep="n/a")


st.header("Metrics")
st.dataframe(
    data.comparison_metrics_frame(report).style.format(precision=3, na_rep="n/a"), hide_index=True
)
if report.get("delong"):
    delong = report["delong"]
    st.write(
        f"DeLong test of the AUC difference: z = {delong['z']:.2f}, p = {delong['p_value']:.4f}"
    )

st.header("Gates")
for gate in report["gates"]:
    mark = ":green[PASS]" if gate["passed"] else ":red[FAIL]"
    st.markdown(f"- {mark} `{gate['name']}`: {gate['detail']}")

st.header("Per batch and per negative subtype")
st.caption("Rows where the candidate's AUC or accuracy is below the champion's are highlighted.")
for title, rows in (
    ("Per batch", report["per_batch"]),
    ("Per negative subtype", report["per_source"]),
):
    st.subheader(title)
    st.dataframe(highlight_regressions(data.slice_frame(rows)), hide_index=True)

st.header("Curves on the frozen test images")
versions = (report["candidate"], *([champion] if champion else []))
scored = cached.test_scores(current, versions)
y = scored.labels
labels = {
    version: f"v{version} ({'candidate' if version == report['candidate'] else 'champion'})"
    for version in versions
}
roc_column, pr_column = st.columns(2)
roc_column.subheader("ROC")
roc_column.altair_chart(
    curve_chart(
        {labels[v]: roc_points(y, scored.covid(v)) for v in versions},
        "false positive rate",
        "true positive rate",
        diagonal=True,
    ),
    width="stretch",
)
pr_column.subheader("Precision-recall")
pr_column.altair_chart(
    curve_chart(
        {labels[v]: pr_points(y, scored.covid(v)) for v in versions},
        "recall",
        "precision",
        diagonal=False,
    ),
    width="stretch",
)

st.subheader("Confusion matrices at each model's frozen threshold")
for column, version in zip(st.columns(len(versions)), versions, strict=True):
    threshold = scored.thresholds[version]
    column.markdown(f"**{labels[version]}**, threshold {threshold:.3f}")
    column.dataframe(confusion_frame(y, scored.covid(version), threshold))

st.subheader("Calibration")
st.altair_chart(
    calibration_chart({labels[v]: calibration_frame(y, scored.covid(v)) for v in versions}),
    width="stretch",
)

st.header("Grad-CAM++ on the same test images")
st.caption("Heat maps of the COVID-19 output: red areas raised the COVID-19 score most.")
for row in select_explained_images(scored.frame, per_label=2).itertuples(index=False):
    kind = "COVID" if row.label == 1 else "negative"
    columns = st.columns(1 + len(versions))
    columns[0].image(
        str(current.store.image_path(row.image_id)), caption=f"{row.file_name} ({kind})"
    )
    for column, version in zip(columns[1:], versions, strict=True):
        index = int(scored.frame.index[scored.frame["image_id"] == row.image_id][0])
        caption = f"{labels[version]}: P(COVID) {scored.covid(version)[index]:.3f}"
        column.image(cached.overlays(current, version, row.image_id), caption=caption)

st.header("Decision")
decision_panel(registry, user, candidate, prefix="compare")
