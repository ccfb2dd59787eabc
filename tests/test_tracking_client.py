"""Clients of one store read its own registry, whatever registry URI the process set before."""

from __future__ import annotations

import mlflow

from ladnn.tracking.store import mlflow_client


def test_client_ignores_process_registry_uri(tmp_path):
    ours = f"sqlite:///{tmp_path / 'ours.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow_client(ours).create_registered_model("ladnn-ours")
    # What `configure_mlflow` leaves behind after it ran for another workspace.
    mlflow.set_registry_uri(other)
    mlflow_client(other).create_registered_model("ladnn-other")

    names = {model.name for model in mlflow_client(ours).search_registered_models()}

    assert names == {"ladnn-ours"}
