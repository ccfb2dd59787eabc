"""Diagnose: score uploaded CT slices with the champion, show Grad-CAM++ overlays, and let
reviewers contribute the slices to the inbox."""

from __future__ import annotations

import logging

import streamlit as st
from mlflow.exceptions import MlflowException

from dashboards import cached, ui
from dashboards.uploads import (
    DICOM_AVAILABLE,
    UPLOAD_TYPES,
    Diagnosis,
    Upload,
    write_contribution,
)
from ladnn.evaluation.registered import ModelNotFoundError, choose_version

logger = logging.getLogger("ladnn.dashboard")

current = ui.settings()
user = ui.require_user(current)
registry = ui.registry(current)

st.title("Diagnose")
try:
    version, reason = choose_version(registry.client, registry.name, None)
except ModelNotFoundError as err:
    st.info(f"No model to diagnose with: {err}")
    st.stop()
try:
    loaded = ui.loaded_model(current, version)
except (ModelNotFoundError, MlflowException, OSError) as err:
    logger.warning("loading model version %s failed: %s", version, err)
    st.error(f"Could not load {registry.name} version {version}: {err}")
    st.stop()
st.write(
    f"Model: **{registry.name} version {version}** ({reason}); {loaded.spec['variant']} on "
    f"{loaded.spec['backbone']}, decision threshold {loaded.threshold:.3f}."
)
st.caption(
    "For research and quality review only; not a medical device and not a diagnosis of a patient."
)
if not DICOM_AVAILABLE:
    st.info(
        "DICOM uploads cannot be read on this server because the Python package pydicom is not "
        "installed (`pip install pydicom`). Upload PNG or JPEG slices instead."
    )

files = st.file_uploader(
    "CT slices (PNG, JPEG or DICOM)",
    type=list(UPLOAD_TYPES),
    accept_multiple_files=True,
    key="diagnose_files",
)
uploads = [Upload(file.name, file.getvalue()) for file in files or []]


def show_diagnosis(result: Diagnosis, overlays: dict) -> None:
    with st.container(border=True):
        decision = "COVID-19 positive" if result.positive else "negative"
        st.subheader(result.name)
        image_column, overlay_column, numbers_column = st.columns([1, 1, 1])
        image_column.image(result.image_bytes, caption="uploaded slice")
        overlay_column.image(overlays["covid"], caption="Grad-CAM++ of the COVID-19 output")
        numbers_column.metric(
            "COVID-19 probability", f"{result.covid_probability:.3f}", help=decision
        )
        numbers_column.write(f"Decision at threshold {result.threshold:.3f}: **{decision}**")
        lesions = {name: value for name, value in result.probabilities.items() if name != "covid"}
        if not lesions:
            numbers_column.caption("Baseline model: no lesion outputs.")
            return
        numbers_column.dataframe(
            {"lesion": list(lesions), "probability": [round(v, 3) for v in lesions.values()]},
            hide_index=True,
        )
        with st.expander("Lesion heat maps"):
            for column, name in zip(st.columns(len(lesions)), lesions, strict=True):
                column.image(overlays[name], caption=f"{name} {lesions[name]:.3f}")


usable: list[Upload] = []
for upload in uploads:
    try:
        result, overlays = cached.diagnosis(current, version, upload)
    except (ValueError, OSError) as err:
        message = str(err)
        logger.info("upload %s by %s could not be scored: %s", upload.name, user.name, message)
        if not message.startswith(upload.name):
            message = f"{upload.name}: {message}"
        st.error(f"Could not score {upload.name}. {message}")
        continue
    usable.append(upload)
    show_diagnosis(result, overlays)

if usable and user.is_reviewer:
    st.header("Contribute to the dataset")
    st.caption(
        f"Writes the {len(usable)} readable slice(s) with a metadata CSV to "
        f"{current.inbox_dir}; the inbox flow validates and imports them as a new batch."
    )
    label = st.radio(
        "Label of these slices", ["covid", "negative"], index=None, key="contribute_label"
    )
    source = st.text_input(
        "Source (DOI, URL or institution)", value="dashboard upload", key="contribute_source"
    )
    consent = st.checkbox(
        "I have the right to share these images for training, and they contain no information "
        "that identifies a patient",
        key="contribute_consent",
    )
    if st.button(
        "Add to the inbox", key="contribute_submit", disabled=not (consent and label is not None)
    ):
        try:
            folder = write_contribution(
                current.inbox_dir,
                usable,
                label=label,
                contributor=user.name,
                source=source.strip() or "dashboard upload",
            )
        except (ValueError, OSError) as err:
            logger.warning("contribution by %s to %s failed: %s", user.name, current.inbox_dir, err)
            st.error(f"The slices were not added to the inbox: {err}")
        else:
            logger.info("%s added %d slice(s) to %s", user.name, len(usable), folder)
            st.success(f"Added {len(usable)} slice(s) to {folder}.")
