"""Register trained models as candidates in the MLflow model registry, with their evidence as tags."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

__all__ = ["register_candidate", "git_commit", "REVIEW_PENDING"]

logger = logging.getLogger(__name__)

REVIEW_PENDING = "pending"
MODEL_DESCRIPTION = "LA-DNN chest-CT COVID-19 classifier (COVID head and five-lesion head)."


def git_commit(path: Path | None = None) -> str:
    """Commit hash of the code, or "unknown" outside a git checkout."""
    folder = path or Path(__file__).resolve().parent
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def register_candidate(
    model_uri: str, name: str, tags: dict[str, str], *, description: str = ""
) -> ModelVersion:
    """Create a new version of registered model `name` with review state `pending`.

    No alias is set: a version becomes `champion` only through a reviewer's promotion.
    """
    client = MlflowClient()
    if not _exists(client, name):
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    all_tags = {**tags, "review_state": REVIEW_PENDING}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    if description:
        client.update_model_version(name, version.version, description=description)
    logger.info("registered %s version %s from %s", name, version.version, model_uri)
    return client.get_model_version(name, version.version)


def _exists(client: MlflowClient, name: str) -> bool:
    return bool(client.search_registered_models(filter_string=f"name = '{name}'"))
