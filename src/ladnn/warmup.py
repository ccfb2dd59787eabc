"""Start-up work that overlaps: Prefect's temporary server starts while the caller imports and
opens its stores.

Without `PREFECT_API_URL`, a flow's first call starts Prefect's temporary server and then waits
for it, about 6 s on a 2-core machine. For about 4 s of that, the server process starts on its own
core while the flow's process only polls. `start_prefect_server` begins that start in a thread,
so the caller's imports and `open_tracking_store` run meanwhile. `wait` joins the thread before
the flow is called, and the flow then finds the server running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ladnn.config import LadnnCfg
from ladnn.workspace import Workspace

__all__ = ["start_prefect_server", "open_tracking_store"]

logger = logging.getLogger(__name__)


def _start_temporary_server(errors: list[BaseException]) -> None:
    try:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return
        # The instance that Prefect's `get_client` starts and reuses within this process.
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()
    except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread by `wait`
        errors.append(error)


def start_prefect_server() -> Callable[[], None]:
    """Start Prefect's temporary server in a thread when no Prefect API URL is configured.

    Return `wait`, which blocks until the server responds and re-raises the error of a failed
    start. Call it before the first flow: a flow that starts while the server is still coming up
    would not wait for it. With `PREFECT_API_URL` set, the thread does nothing.
    """
    errors: list[BaseException] = []
    # Not a daemon: a process that exits early still waits for the start to finish, so that
    # Prefect's exit handler, registered by the start, stops the server process.
    thread = threading.Thread(
        target=_start_temporary_server, args=(errors,), name="prefect-server-start"
    )
    thread.start()

    def wait() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return wait


def open_tracking_store(cfg: LadnnCfg, workspace: Workspace) -> None:
    """Open the MLflow tracking store and model registry that a run of `cfg` will use.

    MLflow keeps each opened store for the life of the process, so a training run in the same
    process skips the schema check that opening a database store costs (about 2 s for SQLite).
    A store that cannot be opened is left to the run, which reports it.
    """
    from ladnn.tracking.store import configure_mlflow, mlflow_client, tracking_uri_for

    try:
        configure_mlflow(cfg, workspace)
        mlflow_client(tracking_uri_for(cfg, workspace)).search_registered_models(max_results=1)
    except Exception as error:  # noqa: BLE001 - the run opens the store again and reports it
        logger.debug("tracking store not opened ahead of the run: %s", error)
