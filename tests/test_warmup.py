"""Prefect's temporary server starting beside the caller's imports, and the tracking store opened
ahead of a run: in new processes, with real Prefect servers and a real MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest

from ladnn.config import load_config
from ladnn.tracking.store import mlflow_client
from ladnn.warmup import open_tracking_store
from ladnn.workspace import Workspace

SERVER_APP = "prefect.server.api.server:create_app"


def _environment(home: Path, **extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "LADNN_SERVERS"))
    }
    environment.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra,
        }
    )
    return environment


def _run_python(code: str, environment: dict[str, str], timeout: float = 300) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _server_processes(home: Path) -> list[int]:
    """PIDs of Prefect server processes whose PREFECT_HOME is `home`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if SERVER_APP.encode() in command and f"PREFECT_HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


def _wait_until_gone(home: Path, seconds: float = 30) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _server_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_flow_uses_the_server_started_ahead(tmp_path):
    home = tmp_path / "prefect"
    report = _run_python(
        """
        import json

        from ladnn.warmup import start_prefect_server

        wait = start_prefect_server()
        from prefect import flow
        from prefect.client.orchestration import get_client
        from prefect.server.api.server import SubprocessASGIServer

        wait()
        server = SubprocessASGIServer()
        started = server.server_process.pid

        @flow
        def forty_two() -> int:
            return 42

        result = forty_two()
        with get_client(sync_client=True) as client:
            api = str(client.api_url)
            runs = len(client.read_flow_runs())
        print(json.dumps({
            "result": result, "api": api, "expected_api": server.api_url, "runs": runs,
            "pid": started, "pid_after": server.server_process.pid,
            "instances": len(SubprocessASGIServer._instances),
        }))
        """,
        _environment(home),
    )

    assert report["result"] == 42
    assert report["api"].rstrip("/") == report["expected_api"].rstrip("/")
    assert report["runs"] == 1
    # The flow reused the server started ahead instead of starting another.
    assert report["pid_after"] == report["pid"]
    assert report["instances"] == 1
    assert _wait_until_gone(home) == []


@pytest.mark.slow
def test_early_exit_leaves_no_server_running(tmp_path):
    home = tmp_path / "prefect"
    _run_python(
        """
        from ladnn.warmup import start_prefect_server

        start_prefect_server()
        print("{}")
        """,
        _environment(home),
    )

    assert _wait_until_gone(home) == []


def test_nothing_starts_with_an_api_url(tmp_path):
    report = _run_python(
        """
        import json, sys

        from ladnn.warmup import start_prefect_server

        start_prefect_server()()
        print(json.dumps({"server_imported": "prefect.server.api.server" in sys.modules}))
        """,
        _environment(tmp_path / "prefect", PREFECT_API_URL="http://127.0.0.1:9/api"),
    )

    assert report["server_imported"] is False


def test_failed_start_is_raised_by_wait(tmp_path):
    home = tmp_path / "prefect"
    report = _run_python(
        """
        import json

        from ladnn.warmup import start_prefect_server

        try:
            start_prefect_server()()
        except Exception as error:
            print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        else:
            print(json.dumps({"error": None}))
        """,
        # A startup timeout of 0 s: Prefect's start gives up at once.
        _environment(home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0"),
    )

    assert report["error"] == "RuntimeError", report
    assert "ephemeral Prefect API server" in report["message"]
    assert _wait_until_gone(home) == []


def test_open_tracking_store_prepares_experiment_and_registry(tmp_path):
    workspace = Workspace(tmp_path / "workspace").ensure()
    cfg = load_config(profile="short")

    open_tracking_store(cfg, workspace)

    client = mlflow_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is not None
    assert experiment.artifact_location == workspace.artifacts_dir.as_uri()
    assert client.search_registered_models() == []
    assert mlflow.get_tracking_uri() == workspace.tracking_uri


def test_cycle_with_missing_batch_starts_no_server(tmp_path):
    from typer.testing import CliRunner

    from ladnn.cli import app

    workspace = tmp_path / "workspace"
    missing = tmp_path / "no-such-batch"
    result = CliRunner().invoke(
        app,
        ["--workspace", str(workspace), "cycle", "--batch", str(missing)],
        env={"PREFECT_HOME": str(workspace / "prefect"), "COLUMNS": "200"},
    )

    assert result.exit_code == 1
    assert f"batch not found at {missing}" in result.output
    assert not any(t.name == "prefect-server-start" for t in threading.enumerate())
