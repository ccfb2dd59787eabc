"""The S3 code paths against moto's S3 server on this machine: dataset versions pushed to a DVC S3
remote and pulled back, and an MLflow tracking server that stores proxied artifacts in S3."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from live_servers import S3_TEST_CREDENTIALS, mlflow_server, moto_server
from mlflow.tracking import MlflowClient

from ladnn.config import ServersCfg, load_config
from ladnn.data.importer import import_items
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import commit_version
from ladnn.servers import apply_servers
from ladnn.workspace import Workspace

# Images per (split, label) of the small dataset that is versioned.
PER_LABEL = 2


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def s3_credentials(monkeypatch) -> None:
    """moto's credentials in this process and in the DVC and MLflow processes it starts."""
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def make_bucket(endpoint: str, name: str):
    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    s3.create_bucket(Bucket=name)
    return s3


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def object_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _small_release(release_dir: Path, root: Path) -> list:
    """Import `PER_LABEL` images of each split and label; return the release's other items."""
    picked: dict[tuple[str, int], int] = {}
    chosen, rest = [], []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if picked.get(key, 0) < PER_LABEL:
            picked[key] = picked.get(key, 0) + 1
            chosen.append(item)
        else:
            rest.append(item)
    import_items(chosen, DatasetStore(root), RELEASE_BATCH_ID, progress=False)
    return rest


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_dvc_s3_remote_round_trip(tmp_path, s3_endpoint, s3_credentials, release_dir):
    s3 = make_bucket(s3_endpoint, "dvc-versions")
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    rest = _small_release(release_dir, root)
    servers = ServersCfg(dvc_remote="s3://dvc-versions/ladnn", s3_endpoint_url=s3_endpoint)

    def cached() -> list[str]:
        return sorted(
            str(path.relative_to(workspace.dvc_cache))
            for path in (workspace.dvc_cache / "files").rglob("*")
            if path.is_file()
        )

    def pushed() -> list[str]:
        return sorted(key.removeprefix("ladnn/") for key in object_keys(s3, "dvc-versions"))

    version, created = commit_version(root, workspace, RELEASE_BATCH_ID, servers=servers)

    assert created
    assert pushed() == cached()
    assert f"files/md5/{version.md5[:2]}/{version.md5[2:]}" in pushed()

    # The second version is staged and pushed in this process, sending only what changed.
    import_items(rest[:2], DatasetStore(root), "batch-2", progress=False)
    second, created = commit_version(root, workspace, "batch-2", servers=servers)

    assert created
    assert second.n_images == version.n_images + 2
    assert pushed() == cached()
    assert f"files/md5/{second.md5[:2]}/{second.md5[2:]}" in pushed()
    assert not any(workspace.dvc_remote.rglob("*")), "the workspace's folder remote was used"
    local_config = (root / ".dvc" / "config.local").read_text()
    assert "s3://dvc-versions/ladnn" in local_config
    assert s3_endpoint in local_config
    assert "testing" not in local_config, "credentials were written to the DVC config"

    # Another machine: no cache and no data, only the pointer file and the shared remote.
    before = _digests(root / "data")
    shutil.rmtree(workspace.dvc_cache)
    shutil.rmtree(root / "data")
    pulled = subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "-q"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert _digests(root / "data") == before


@pytest.fixture(scope="module")
def s3_mlflow(tmp_path_factory, s3_endpoint) -> Iterator[str]:
    """An MLflow server on SQLite whose proxied artifacts go to the bucket `mlflow-artifacts`."""
    make_bucket(s3_endpoint, "mlflow-artifacts")
    folder = tmp_path_factory.mktemp("s3-mlflow")
    with mlflow_server(
        f"sqlite:///{folder / 'mlflow.db'}",
        "s3://mlflow-artifacts/runs",
        folder,
        extra_env={**S3_TEST_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
    ) as url:
        yield url


def test_mlflow_server_artifacts_in_s3(tmp_path, s3_endpoint, s3_mlflow):
    client = MlflowClient(s3_mlflow)
    experiment = client.create_experiment("s3-artifacts")
    run = client.create_run(experiment)
    report = tmp_path / "report.json"
    report.write_text('{"auc": 0.5}')

    client.log_artifact(run.info.run_id, str(report), "reports")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    keys = object_keys(s3, "mlflow-artifacts", "runs/")
    assert [key for key in keys if key.endswith(f"{run.info.run_id}/artifacts/reports/report.json")]
    downloaded = client.download_artifacts(run.info.run_id, "reports/report.json", str(tmp_path))
    assert Path(downloaded).read_text() == '{"auc": 0.5}'


def test_servers_file_exports_s3_endpoint(tmp_path, monkeypatch, s3_endpoint):
    """`servers.s3_endpoint_url` reaches MLflow clients that write S3 artifacts themselves."""
    servers_file = tmp_path / "servers.yaml"
    servers_file.write_text(
        f"servers:\n  s3_endpoint_url: {s3_endpoint}\n  dvc_remote: s3://dvc-versions/x\n"
    )
    monkeypatch.setenv("LADNN_SERVERS", str(servers_file))
    # Set, so that monkeypatch restores the variable that apply_servers overwrites.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "")
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    s3 = make_bucket(s3_endpoint, "direct-artifacts")

    apply_servers(load_config())

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("direct", artifact_location="s3://direct-artifacts/x")
    run = client.create_run(experiment)
    note = tmp_path / "note.txt"
    note.write_text("direct")
    client.log_artifact(run.info.run_id, str(note))
    assert object_keys(s3, "direct-artifacts") == [f"x/{run.info.run_id}/artifacts/note.txt"]
