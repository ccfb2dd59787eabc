"""Real servers for tests, started on this machine on free ports: fresh PostgreSQL databases, an
MLflow tracking server, moto's S3 server and a Prefect server.

Every server runs in its own process group with its output in a log file, and is stopped (its
group terminated, then killed) when its context manager exits. A server that does not respond in
time fails the test with the end of its log.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

__all__ = [
    "POSTGRES",
    "free_port",
    "postgres_database",
    "postgres_url",
    "running_server",
    "mlflow_server",
    "moto_server",
    "prefect_server",
    "S3_TEST_CREDENTIALS",
]

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
BIN = Path(sys.executable).parent
# moto accepts any credentials; these keep boto, DVC and MLflow away from real ones.
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_url(name: str, driver: str = "psycopg2") -> str:
    return "postgresql+{driver}://{user}@{host}:{port}/{name}".format(
        driver=driver, name=name, **POSTGRES
    )


@contextmanager
def postgres_database(prefix: str = "ladnn_test") -> Iterator[str]:
    """Create a uniquely named database, yield its name, and drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _log_tail(path: Path, characters: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text[-characters:]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        # Servers may wait for idle keep-alive connections of the test's clients to close.
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@contextmanager
def running_server(
    command: list[str], ready_url: str, log_path: Path, env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen]:
    """Start `command` in a new process group and yield it once `ready_url` returns a status
    below 500."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"{command[0]} exited with {process.returncode} before responding at "
                    f"{ready_url}:\n{_log_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as response:
                    if response.status < 500:
                        break
            except urllib.error.HTTPError as err:
                if err.code < 500:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{' '.join(command[:3])} did not respond at {ready_url} within "
                    f"{STARTUP_TIMEOUT_S} s:\n{_log_tail(log_path)}"
                )
            time.sleep(0.5)
        yield process
    finally:
        _stop(process)


def _environment(extra: dict[str, str]) -> dict[str, str]:
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    environment.update(extra)
    return environment


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    folder: Path,
    *,
    auth_database_uri: str | None = None,
    admin_password: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `mlflow server` with proxied artifacts; yield its URL.

    With `auth_database_uri`, the server runs the basic-auth app (`--app-name basic-auth`) with
    its users in that database and the admin password `admin_password`.
    """
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    env = dict(extra_env or {})
    if auth_database_uri is not None:
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {auth_database_uri}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        command += ["--app-name", "basic-auth"]
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config)}
        if admin_password is not None:
            env |= {"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password}
        # Signs the CSRF tokens of the auth app's web forms; the same for all workers.
        env |= {"MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    url = f"http://127.0.0.1:{port}"
    with running_server(
        command, f"{url}/health", folder / "mlflow-server.log", _environment(env), folder
    ):
        yield url


@contextmanager
def moto_server(folder: Path) -> Iterator[str]:
    """Run moto's S3-compatible server; yield its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with running_server(
        command, f"{url}/", folder / "moto.log", _environment(S3_TEST_CREDENTIALS), folder
    ):
        yield url


@contextmanager
def prefect_server(database_url: str, home: Path) -> Iterator[str]:
    """Run `prefect server start` on `database_url` (postgresql+asyncpg://...); yield its API
    URL."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    with running_server(command, f"{api}/health", home / "server.log", _environment(env), home):
        yield api
