"""Shared servers: export the configured server settings to the environment of this process.

The `servers` and `tracking` sections of the configuration name the shared stores. MLflow and
Prefect read their servers from environment variables, so `apply_servers` exports the configured
values before either library opens a client. Secrets never come from the configuration:

- MLflow basic authentication: `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`;
- S3 (DVC remote, MLflow artifacts written by clients): `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY`;
- PostgreSQL passwords of database URLs: `PGPASSWORD` or `~/.pgpass`, which libpq reads.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from ladnn.config import LadnnCfg

__all__ = ["apply_servers", "check_servers", "uses_servers"]

logger = logging.getLogger(__name__)

_HTTP_SCHEMES = ("http", "https")
_DVC_SCHEMES = ("s3", "gs", "azure", "ssh", "http", "https", "webdav", "webdavs", "hdfs")


def uses_servers(cfg: LadnnCfg) -> bool:
    """Return whether any shared server is configured."""
    servers = cfg.servers
    return bool(
        cfg.tracking.tracking_uri
        or servers.prefect_api_url
        or servers.dvc_remote
        or servers.dask_address
    )


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def check_servers(cfg: LadnnCfg) -> None:
    """Raise ValueError naming the first invalid server setting and how to fix it."""
    tracking_uri = cfg.tracking.tracking_uri
    servers = cfg.servers
    for key, url in (
        ("tracking.tracking_uri", tracking_uri),
        ("tracking.audit_uri", cfg.tracking.audit_uri),
        ("servers.prefect_api_url", servers.prefect_api_url),
        ("servers.s3_endpoint_url", servers.s3_endpoint_url),
    ):
        if url and _has_password(url):
            raise ValueError(
                f"{key} contains a password: remove it and set it in the environment "
                "(MLFLOW_TRACKING_PASSWORD, PGPASSWORD or AWS_SECRET_ACCESS_KEY)"
            )
    if urlsplit(tracking_uri).scheme in _HTTP_SCHEMES and not cfg.tracking.audit_uri:
        raise ValueError(
            f"tracking.tracking_uri {tracking_uri!r} is an MLflow server, whose database the review "
            "audit log cannot reach: set tracking.audit_uri to a SQLAlchemy URL of a shared "
            "database (e.g. postgresql+psycopg2://ladnn@db:5432/ladnn_audit)"
        )
    if servers.prefect_api_url:
        parts = urlsplit(servers.prefect_api_url)
        if parts.scheme not in _HTTP_SCHEMES or not parts.path.rstrip("/").endswith("/api"):
            raise ValueError(
                f"servers.prefect_api_url {servers.prefect_api_url!r} is not a Prefect API URL: "
                "expected http(s)://HOST:PORT/api"
            )
    if servers.dvc_remote:
        scheme = urlsplit(servers.dvc_remote).scheme
        if scheme not in _DVC_SCHEMES:
            raise ValueError(
                f"servers.dvc_remote {servers.dvc_remote!r} is not a remote URL: expected one of "
                f"the schemes {list(_DVC_SCHEMES)}, e.g. s3://bucket/path; leave it empty for the "
                "workspace's folder"
            )
    if servers.s3_endpoint_url and urlsplit(servers.s3_endpoint_url).scheme not in _HTTP_SCHEMES:
        raise ValueError(
            f"servers.s3_endpoint_url {servers.s3_endpoint_url!r} is not an http(s) URL"
        )
    if servers.dask_address and urlsplit(servers.dask_address).scheme not in ("tcp", "tls"):
        raise ValueError(
            f"servers.dask_address {servers.dask_address!r} is not a Dask scheduler address: "
            "expected tcp://HOST:8786 or tls://HOST:8786"
        )
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if bool(username) != bool(password):
        missing = "MLFLOW_TRACKING_PASSWORD" if username else "MLFLOW_TRACKING_USERNAME"
        raise ValueError(
            f"{missing} is not set: MLflow basic authentication needs both "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )


def apply_servers(cfg: LadnnCfg) -> None:
    """Check the server settings and export them to the environment variables that Prefect and
    MLflow read.

    Prefect reads `PREFECT_API_URL` once, when it is first imported, so call this before anything
    imports `prefect`. A configured value replaces one already in the environment, with a warning.
    """
    check_servers(cfg)
    exported = {
        "PREFECT_API_URL": cfg.servers.prefect_api_url,
        "MLFLOW_S3_ENDPOINT_URL": cfg.servers.s3_endpoint_url,
    }
    for name, value in exported.items():
        if not value:
            continue
        previous = os.environ.get(name)
        if previous and previous != value:
            logger.warning("%s=%s replaces %s from the environment", name, value, previous)
        os.environ[name] = value
