"""Resolution of each flow's configuration and workspace, and the events the flows emit."""

from __future__ import annotations

from pathlib import Path

from ladnn.config import LadnnCfg, load_config
from ladnn.servers import apply_servers
from ladnn.workspace import Workspace

__all__ = ["resolve", "DATASET_VERSION_CREATED", "DRIFT_DETECTED"]

# Events emitted by the ingest flow; the retrain deployment is triggered by the first.
DATASET_VERSION_CREATED = "ladnn.dataset.version.created"
DRIFT_DETECTED = "ladnn.dataset.drift.detected"


def resolve(
    config_path: str | None,
    overrides: list[str] | None,
    profile: str | None,
    workspace: str | None,
) -> tuple[LadnnCfg, Workspace]:
    cfg = load_config(config_path, overrides or [], profile)
    apply_servers(cfg)
    space = Workspace.resolve(Path(workspace) if workspace else None).ensure()
    return cfg, space
