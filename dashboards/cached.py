"""Cached computations of the pages, keyed by everything their result depends on.

Streamlit's caches live in the server process and are shared by all sessions. Arguments whose name
starts with `_` are not hashed; the hashed arguments (tracking URI, versions, image ids, the
metadata file's modification time) identify the result.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboards import data, ui
from dashboards.scoring import ScoredModels, explain_overlays, score_test_frame
from dashboards.settings import Settings
from dashboards.uploads import Diagnosis, Upload, diagnose_upload

__all__ = ["comparison", "test_scores", "overlays", "diagnosis"]


@st.cache_data(show_spinner=False, max_entries=16)
def _comparison(
    tracking_uri: str, name: str, version: str, uri: str, _settings: Settings
) -> dict | None:
    return data.load_comparison(ui.registry(_settings).client, name, version)


def comparison(current: Settings, version: str) -> dict | None:
    """Load the stored comparison report of `version`; None when it was never compared."""
    registry = ui.registry(current)
    uri = registry.client.get_model_version(registry.name, version).tags.get("comparison_uri")
    if not uri:
        return None
    return _comparison(current.tracking_uri, registry.name, version, uri, current)


def _metadata_stamp(current: Settings) -> float:
    path = current.store.metadata_path
    return path.stat().st_mtime if path.is_file() else 0.0


@st.cache_data(show_spinner="Scoring the frozen test images…", max_entries=8)
def _test_scores(
    tracking_uri: str, name: str, versions: tuple[str, ...], stamp: float, _settings: Settings
) -> ScoredModels:
    models = {version: ui.loaded_model(_settings, version) for version in versions}
    return score_test_frame(name, models, _settings.store, _settings.workspace)


def test_scores(current: Settings, versions: tuple[str, ...]) -> ScoredModels:
    """Score the versions on the frozen test images of the current dataset."""
    return _test_scores(
        current.tracking_uri, current.model_name, versions, _metadata_stamp(current), current
    )


@st.cache_data(show_spinner="Computing Grad-CAM++ maps…", max_entries=64)
def _overlay(
    tracking_uri: str, name: str, version: str, image_id: str, _settings: Settings
) -> np.ndarray:
    loaded = ui.loaded_model(_settings, version)
    image = _settings.store.image_path(image_id).read_bytes()
    return explain_overlays(loaded, image, f"{image_id}.png", ("covid",))["covid"]


def overlays(current: Settings, version: str, image_id: str) -> np.ndarray:
    """Compute the Grad-CAM++ overlay of the COVID-19 output of `version` on a dataset image."""
    return _overlay(current.tracking_uri, current.model_name, version, image_id, current)


@st.cache_data(show_spinner="Scoring the upload…", max_entries=64)
def _diagnosis(
    tracking_uri: str, name: str, version: str, file_name: str, data: bytes, _settings: Settings
) -> tuple[Diagnosis, dict[str, np.ndarray]]:
    loaded = ui.loaded_model(_settings, version)
    result = diagnose_upload(loaded, Upload(file_name, data))
    return result, explain_overlays(loaded, result.image_bytes, file_name)


def diagnosis(
    current: Settings, version: str, upload: Upload
) -> tuple[Diagnosis, dict[str, np.ndarray]]:
    """Score one upload and compute the Grad-CAM++ overlays of every output.

    Raises `ImageDecodeError` (a ValueError) naming the file when it is not a usable image.
    """
    return _diagnosis(
        current.tracking_uri, current.model_name, version, upload.name, upload.data, current
    )


@st.cache_data(show_spinner=False, max_entries=4)
def data_docs_zip(index: str) -> bytes:
    """Return the zipped Data Docs of one validation result, cached because a stored result does
    not change."""
    return data.data_docs_zip(index)
