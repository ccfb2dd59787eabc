"""No secret reaches the MLflow run, its artifacts, the logs or the workspace.

A training run logs to a fresh PostgreSQL database through a tracking URI that contains a password.
The local server trusts every connection, so the password is not needed to connect, yet it must not
appear in the run's parameters, tags, artifacts, the tracking database, the log records, the output
or the files of the workspace.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import mlflow
import psycopg2
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ladnn import cli
from ladnn.config import load_config
from ladnn.data.importer import import_items
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DatasetVersion, commit_version
from ladnn.reproduce.runs import start_parent_run
from ladnn.tracking.redact import REDACTED, redact_secrets, redact_url
from ladnn.tracking.store import tracking_uri_for
from ladnn.training.run import run_training
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PER_LABEL = {"train": 4, "val": 2, "test": 2}
SETTINGS = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=8",
    "eval.bootstrap=10",
    "model.backbone=resnet18",
    "model.pretrained=false",
]


@pytest.fixture(scope="module")
def database() -> str:
    """A fresh PostgreSQL database for this module, dropped afterwards."""
    name = f"ladnn_secret_{secrets.token_hex(6)}"
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


def test_redact_url_hides_password():
    assert redact_url("postgresql://ana:pw@db:5432/x") == f"postgresql://ana:{REDACTED}@db:5432/x"
    assert redact_url("http://mlflow:5000") == "http://mlflow:5000"
    assert redact_url("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_redact_secrets_nested_keys():
    values = {"tracking": {"db_password": "pw", "uris": ["s3://u:pw@h/b"]}, "epochs": 3}

    redacted = redact_secrets(values)

    assert redacted["tracking"]["db_password"] == REDACTED
    assert redacted["tracking"]["uris"] == [f"s3://u:{REDACTED}@h/b"]
    assert redacted["epochs"] == 3
    assert values["tracking"]["db_password"] == "pw"


def _small_dataset(release_dir: Path, root: Path, workspace: Workspace):
    picked: dict[tuple[str, int], int] = {}
    chosen = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if picked.get(key, 0) < PER_LABEL[item.split]:
            picked[key] = picked.get(key, 0) + 1
            chosen.append(item)
    import_items(chosen, DatasetStore(root), RELEASE_BATCH_ID, progress=False)
    return commit_version(root, workspace, RELEASE_BATCH_ID)[0]


def _database_text(name: str) -> str:
    """Return every text cell of the tracking database's run, tag, param and experiment tables."""
    cells = []
    with psycopg2.connect(dbname=name, **POSTGRES) as connection, connection.cursor() as cursor:
        for table in ("params", "tags", "experiments", "runs", "model_versions", "logged_models"):
            cursor.execute("SELECT to_regclass(%s)", (table,))
            if cursor.fetchone()[0] is None:
                continue
            cursor.execute(f"SELECT * FROM {table}")
            cells += [str(cell) for row in cursor.fetchall() for cell in row]
    return "\n".join(cells)


def test_training_run_logs_no_password(tmp_path, release_dir, database, caplog, capfd, monkeypatch):
    password = f"pw-{secrets.token_hex(8)}"
    uri = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:5432/{database}"
    monkeypatch.setenv("PGPASSWORD", password)
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    version = _small_dataset(release_dir, root, workspace)
    cfg = load_config(overrides=[*SETTINGS, f"data.root={root}", f"tracking.tracking_uri={uri}"])
    caplog.set_level(logging.DEBUG)

    run = run_training(cfg, workspace, DatasetStore(root), version, progress=False)

    client = MlflowClient(uri)
    logged = client.get_run(run.run_id)
    assert logged.data.params["tracking.tracking_uri"].endswith(
        f":{REDACTED}@127.0.0.1:5432/{database}"
    )
    assert all(password not in value for value in logged.data.params.values())
    assert all(password not in value for value in logged.data.tags.values())
    assert password not in _database_text(database)
    artifacts = Path(
        mlflow.artifacts.download_artifacts(run_id=run.run_id, dst_path=str(tmp_path / "artifacts"))
    )
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    for path in workspace.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert password.encode() not in path.read_bytes(), path
    assert all(password not in record.getMessage() for record in caplog.records)
    captured = capfd.readouterr()
    assert password not in captured.out
    assert password not in captured.err


def test_cli_password_uri_not_echoed(tmp_path, database):
    password = f"pw-{secrets.token_hex(8)}"
    uri = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:5432/{database}"
    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(
            cli.app,
            [
                "--workspace",
                str(tmp_path / "workspace"),
                "--set",
                f"tracking.tracking_uri={uri}",
                "models",
            ],
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)

    assert password not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_reproduce_parent_run_logs_no_password(tmp_path):
    password = f"pw-{secrets.token_hex(8)}"
    cfg = load_config(
        overrides=[f"tracking.audit_uri=postgresql://auditor:{password}@127.0.0.1:5432/audit"]
    )
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    version = DatasetVersion(
        number=1,
        md5="0" * 32 + ".dir",
        created_at="2026-12-05T00:00:00+00:00",
        batch_ids=["covid-ct-release"],
        n_images=746,
        counts={},
        dvc_file="data.dvc",
    )

    run_id = start_parent_run(cfg, workspace, version, ["resnet18"])

    client = MlflowClient(tracking_uri_for(cfg, workspace))
    run = client.get_run(run_id)
    assert run.data.params["tracking.audit_uri"] != cfg.tracking.audit_uri
    assert password not in json.dumps(run.data.params)
    logged = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "out")))
    assert password not in logged.read_text()
