"""Point MLflow at the configured tracking store: a SQLite file in the workspace by default."""

from __future__ import annotations

import logging

import mlflow
from mlflow.tracking import MlflowClient

from ladnn.config import LadnnCfg
from ladnn.workspace import Workspace

__all__ = ["configure_mlflow", "tracking_uri_for"]

logger = logging.getLogger(__name__)


def tracking_uri_for(cfg: LadnnCfg, workspace: Workspace) -> str:
    return cfg.tracking.tracking_uri or workspace.tracking_uri


def mlflow_client(uri: str) -> MlflowClient:
    """Return a client whose tracking store and model registry are both `uri`.

    `MlflowClient(uri)` alone takes its registry from `mlflow.set_registry_uri` or the
    `MLFLOW_REGISTRY_URI` variable when either is set, which may name another store.
    """
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure_mlflow(cfg: LadnnCfg, workspace: Workspace) -> str:
    """Set the tracking and registry URI and create the experiment; return the experiment id.

    With a database store (SQLite or PostgreSQL, no tracking server), artifacts go to
    `<workspace>/mlflow/artifacts`; a tracking server keeps its own artifact store.
    """
    uri = tracking_uri_for(cfg, workspace)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        is_server = uri.startswith(("http://", "https://", "databricks"))
        location = None if is_server else workspace.artifacts_dir.as_uri()
        experiment_id = client.create_experiment(
            cfg.tracking.experiment, artifact_location=location
        )
        logger.info("created MLflow experiment %s (%s)", cfg.tracking.experiment, experiment_id)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
