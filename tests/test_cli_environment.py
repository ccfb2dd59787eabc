"""Process settings that the `ladnn` entry point sets before any command runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prefect.settings import Settings
from typer.testing import CliRunner

from ladnn.cli import app

STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@pytest.fixture
def clean_environment(monkeypatch):
    """Forget what the entry point exports, then restore the test process's values afterwards."""
    for name in (STARTUP, "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "DVC_NO_ANALYTICS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_prefect_temporary_server_gets_time_to_start(clean_environment, tmp_path):
    """Prefect's own limit of 20 s failed `ladnn cycle` on a busy 2-core machine."""
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "config", "show"])

    assert result.exit_code == 0, result.output
    assert Settings().server.ephemeral.startup_timeout_seconds == 180
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "ws" / "prefect")


def test_tools_send_no_analytics(clean_environment, tmp_path):
    """Prefect's server otherwise tries to send usage data on start and logs the failure."""
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "config", "show"])

    assert result.exit_code == 0, result.output
    assert Settings().server.analytics_enabled is False
    assert os.environ["DVC_NO_ANALYTICS"] == "1"


def test_user_startup_limit_kept(clean_environment, tmp_path, monkeypatch):
    monkeypatch.setenv(STARTUP, "45")

    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "config", "show"])

    assert result.exit_code == 0, result.output
    assert Settings().server.ephemeral.startup_timeout_seconds == 45


def test_summary_names_programs_the_shell_runs(monkeypatch):
    """The cycle summary's next commands work whether or not the environment is activated."""
    from ladnn.cycle import _program

    bin_dir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    outside = _program("ladnn")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    inside = _program("ladnn")

    assert outside == str(bin_dir / "ladnn")
    assert inside == "ladnn"
