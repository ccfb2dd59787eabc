"""Data: dataset versions, validation results, quarantined files and an image gallery."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboards import cached, data, ui
from ladnn.data.lesions import LESION_NAMES, LESIONS

GALLERY_COLUMNS = 6
GALLERY_PAGE_SIZE = 24

current = ui.settings()
user = ui.require_user(current)
store = current.store

st.title("Data")
st.caption(f"Dataset in {store.data_dir}; version records in {current.workspace.datasets_dir}")

st.header("Dataset versions")
growth = data.dataset_growth(current.workspace)
if growth.empty:
    st.info("No dataset version is recorded yet: import data with `ladnn import release`.")
else:
    st.dataframe(growth, hide_index=True)

st.header("Validation results")
validation = data.validation_frame(current.workspace)
if validation.empty:
    st.caption(f"No validation result in {current.workspace.validation_dir}.")
else:
    st.dataframe(validation.drop(columns=["summary"]), hide_index=True)
    chosen = st.selectbox("Show the summary of", validation["validation id"].tolist())
    row = validation[validation["validation id"] == chosen].iloc[0]
    st.code(row["summary"], language=None)
    if row["Data Docs"]:
        st.download_button(
            "Download the Data Docs (zip)",
            data=cached.data_docs_zip(row["Data Docs"]),
            file_name=f"{chosen}-data-docs.zip",
            mime="application/zip",
            help="Unzip it and open index.html in a browser.",
        )
        st.caption(f"On this machine: `{row['Data Docs']}`")

st.header("Quarantine")
quarantine = data.quarantine_frame(current.workspace)
if quarantine.empty:
    st.caption(f"No file is quarantined in {current.workspace.quarantine_dir}.")
else:
    st.write(f"{len(quarantine)} file(s) rejected by the import checks:")
    st.dataframe(quarantine, hide_index=True)

st.header("Gallery")
metadata = store.read_metadata()
if metadata.empty:
    st.caption("The dataset has no images yet.")
    st.stop()
filters = st.columns(4)
labels = filters[0].multiselect(
    "Label", [1, 0], format_func=lambda v: "COVID" if v == 1 else "negative", key="gallery_label"
)
lesion = filters[1].selectbox(
    "Lesion present",
    [None, *LESIONS],
    format_func=lambda v: "any" if v is None else f"{v} ({LESION_NAMES[v]})",
    key="gallery_lesion",
)
splits = filters[2].multiselect("Split", ["train", "val", "test"], key="gallery_split")
batches = filters[3].multiselect(
    "Batch", sorted(metadata["batch_id"].dropna().unique().tolist()), key="gallery_batch"
)
selected = data.gallery_frame(store, labels=labels, lesion=lesion, splits=splits, batches=batches)
pages = max(1, -(-len(selected) // GALLERY_PAGE_SIZE))
page = st.number_input(
    f"{len(selected)} image(s); page (of {pages})", 1, pages, 1, key="gallery_page"
)
page_rows = selected.iloc[(page - 1) * GALLERY_PAGE_SIZE : page * GALLERY_PAGE_SIZE]
columns = st.columns(GALLERY_COLUMNS)
for index, row in enumerate(page_rows.itertuples(index=False)):
    kind = "COVID" if row.label == 1 else "negative"
    columns[index % GALLERY_COLUMNS].image(
        str(store.image_path(row.image_id)),
        caption=f"{Path(row.file_name).name} ({kind}, {row.split}, {row.batch_id})",
        width="stretch",
    )
