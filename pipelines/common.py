"""Resolution of each flow's configuration and workspace, and the events the flows emit."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from ladnn.config import LadnnCfg, load_config
from ladnn.servers import apply_servers
from ladnn.workspace import Workspace

__all__ = ["resolve", "send_library_logs_to_runs", "DATASET_VERSION_CREATED", "DRIFT_DETECTED"]

# Events emitted by the ingest flow; the retrain deployment is triggered by the first.
DATASET_VERSION_CREATED = "ladnn.dataset.version.created"
DRIFT_DETECTED = "ladnn.dataset.drift.detected"


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, for records logged inside a flow or task run only."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def send_library_logs_to_runs() -> None:
    """Send the `ladnn` library's messages (imports, epochs, resumes) to the flow run's logs.

    A flow-run process leaves the root logger at WARNING, so the library logger gets INFO, or
    DEBUG when the root logger is already that verbose, unless it has a level of its own.
    """
    library = logging.getLogger("ladnn")
    if library.level == logging.NOTSET:
        library.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    if not any(isinstance(handler, RunLogHandler) for handler in library.handlers):
        library.addHandler(RunLogHandler())


send_library_logs_to_runs()


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
