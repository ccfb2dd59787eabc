"""The servers switch: `LADNN_SERVERS` names a file whose `tracking` and `servers` sections move
the CLI, flows and dashboard from the embedded stores to shared servers."""

from __future__ import annotations

import os

import pytest
import yaml
from typer.testing import CliRunner

from ladnn.cli import app
from ladnn.config import load_config
from ladnn.servers import apply_servers, check_servers, uses_servers

SERVERS = {
    "tracking": {
        "tracking_uri": "http://mlflow.internal:5000",
        "audit_uri": "postgresql+psycopg2://ladnn@db.internal:5432/ladnn_audit",
    },
    "servers": {
        "prefect_api_url": "http://prefect.internal:4200/api",
        "dvc_remote": "s3://ladnn-data/dvc",
        "s3_endpoint_url": "http://minio.internal:9000",
    },
}


@pytest.fixture
def servers_file(tmp_path, monkeypatch):
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump(SERVERS))
    monkeypatch.setenv("LADNN_SERVERS", str(path))
    # Set, so that monkeypatch restores what apply_servers overwrites.
    for name in ("PREFECT_API_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, "")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_defaults_use_no_server(monkeypatch):
    monkeypatch.delenv("LADNN_SERVERS", raising=False)
    cfg = load_config()
    assert not uses_servers(cfg)
    assert cfg.tracking.tracking_uri == ""
    assert cfg.servers.dvc_remote == ""


def test_servers_file_sets_every_store(servers_file):
    cfg = load_config()
    assert uses_servers(cfg)
    assert cfg.tracking.tracking_uri == SERVERS["tracking"]["tracking_uri"]
    assert cfg.tracking.audit_uri == SERVERS["tracking"]["audit_uri"]
    assert cfg.servers.prefect_api_url == SERVERS["servers"]["prefect_api_url"]
    assert cfg.servers.dvc_remote == SERVERS["servers"]["dvc_remote"]
    assert cfg.servers.s3_endpoint_url == SERVERS["servers"]["s3_endpoint_url"]


def test_overrides_win_over_servers_file(servers_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("servers:\n  dvc_remote: s3://other/dvc\n")
    cfg = load_config(config, ["servers.prefect_api_url=http://127.0.0.1:4200/api"])
    assert cfg.servers.dvc_remote == "s3://other/dvc"
    assert cfg.servers.prefect_api_url == "http://127.0.0.1:4200/api"
    assert cfg.profile == "short"


def test_servers_file_rejects_training_sections(tmp_path, monkeypatch):
    path = tmp_path / "servers.yaml"
    path.write_text("servers:\n  dvc_remote: s3://x/y\ntrain:\n  epochs: 1\n")
    monkeypatch.setenv("LADNN_SERVERS", str(path))
    with pytest.raises(ValueError, match=r"may set only the sections .* found \['train'\]"):
        load_config()


def test_missing_servers_file_named(tmp_path, monkeypatch):
    missing = tmp_path / "absent.yaml"
    monkeypatch.setenv("LADNN_SERVERS", str(missing))
    with pytest.raises(ValueError, match=f"LADNN_SERVERS names {missing}, which is not a file"):
        load_config()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.tracking_uri=http://admin:secret@mlflow:5000", "contains a password"),
        ("tracking.audit_uri=", "needs its own|audit log cannot reach"),
        ("servers.prefect_api_url=http://prefect:4200", "not a Prefect API URL"),
        ("servers.dvc_remote=/mnt/dvc", "not a remote URL"),
        ("servers.s3_endpoint_url=minio:9000", "not an http"),
        ("servers.dask_address=http://dask:8786", "not a Dask scheduler address"),
    ],
)
def test_invalid_server_setting_rejected(servers_file, override, message):
    with pytest.raises(ValueError, match=message):
        check_servers(load_config(overrides=[override]))


def test_username_without_password_rejected(servers_file, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD is not set"):
        check_servers(load_config())


def test_apply_exports_prefect_and_s3(servers_file):
    apply_servers(load_config())
    assert os.environ["PREFECT_API_URL"] == SERVERS["servers"]["prefect_api_url"]
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == SERVERS["servers"]["s3_endpoint_url"]


def test_cli_reads_servers_file(servers_file, tmp_path):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "config", "show"])
    assert result.exit_code == 0, result.output
    assert "s3://ladnn-data/dvc" in result.output
    assert "http://mlflow.internal:5000" in result.output
    assert os.environ["PREFECT_API_URL"] == SERVERS["servers"]["prefect_api_url"]


def test_cli_reports_invalid_servers_file(tmp_path, monkeypatch):
    path = tmp_path / "servers.yaml"
    path.write_text("servers:\n  prefect_api_url: prefect:4200\n")
    monkeypatch.setenv("LADNN_SERVERS", str(path))
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "config", "show"])
    assert result.exit_code == 1
    assert "not a Prefect API URL" in result.output


def test_dashboard_settings_apply_servers(servers_file, tmp_path, monkeypatch):
    from dashboards.settings import load_settings

    monkeypatch.setenv("LADNN_WORKSPACE", str(tmp_path / "ws"))
    settings = load_settings()
    assert settings.tracking_uri == SERVERS["tracking"]["tracking_uri"]
    assert os.environ["PREFECT_API_URL"] == SERVERS["servers"]["prefect_api_url"]
