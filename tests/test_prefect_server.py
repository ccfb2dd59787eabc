"""The ingest flow deployed to a Prefect server and run by a process worker, with the shared
stores named by one servers file.

The Prefect server runs on a fresh PostgreSQL database. The flow runs in a subprocess that the
worker starts, and that subprocess reads every store from `LADNN_SERVERS`. The stores are the
Prefect API and a DVC remote in moto's S3 server, where the test then finds the new version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml
from live_servers import (
    BIN,
    S3_TEST_CREDENTIALS,
    moto_server,
    postgres_database,
    postgres_url,
    prefect_server,
    running_server,
)

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = "ladnn-process"
DEPLOYMENT = "ingest-on-worker"
FLOW_TIMEOUT_S = 600

DEPLOY_SCRIPT = """
import json, sys
from prefect import flow

source, entrypoint, pool, name, parameters = sys.argv[1:6]
remote = flow.from_source(source=source, entrypoint=entrypoint)
deployment_id = remote.deploy(
    name=name, work_pool_name=pool, parameters=json.loads(parameters), print_next_steps=False
)
print(deployment_id)
"""

RUN_SCRIPT = """
import sys
from prefect.deployments import run_deployment

run = run_deployment(sys.argv[1], timeout=float(sys.argv[2]), poll_interval=2)
print(run.id, run.state.type.value, run.state.message or "")
"""


def _run(command: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ingest_flow_runs_on_worker(tmp_path, new_data_dir):
    with (
        postgres_database("ladnn_prefect") as database,
        prefect_server(postgres_url(database, "asyncpg"), tmp_path / "server") as api,
        moto_server(tmp_path / "moto") as s3_endpoint,
    ):
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        s3.create_bucket(Bucket="shared-data")
        servers_file = tmp_path / "servers.yaml"
        servers_file.write_text(
            yaml.safe_dump(
                {
                    "servers": {
                        "prefect_api_url": api,
                        "dvc_remote": "s3://shared-data/dvc",
                        "s3_endpoint_url": s3_endpoint,
                    }
                }
            )
        )
        env = {
            **os.environ,
            **S3_TEST_CREDENTIALS,
            "LADNN_SERVERS": str(servers_file),
            # The CLI and the deploying script point Prefect at the server; the worker passes
            # the variable on to the flow-run process.
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        root = tmp_path / "root"
        root.mkdir()
        workspace = tmp_path / "workspace"
        parameters = {
            "source": str(new_data_dir / "5.16"),
            "overrides": [f"data.root={root}"],
            "workspace": str(workspace),
        }

        _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env, 120)
        _run(
            [
                sys.executable,
                "-c",
                DEPLOY_SCRIPT,
                str(REPO_ROOT),
                "pipelines/ingest.py:ingest_flow",
                POOL,
                DEPLOYMENT,
                json.dumps(parameters),
            ],
            env,
            180,
        )
        worker_log = tmp_path / "worker.log"
        with running_server(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            f"{api}/health",
            worker_log,
            env,
            REPO_ROOT,
        ):
            started = time.monotonic()
            output = _run(
                [sys.executable, "-c", RUN_SCRIPT, f"ingest/{DEPLOYMENT}", str(FLOW_TIMEOUT_S)],
                env,
                FLOW_TIMEOUT_S + 60,
            )
            seconds = time.monotonic() - started
        run_id, state, message = (output.strip().splitlines()[-1].split(" ", 2) + [""])[:3]

        assert state == "COMPLETED", f"{state} {message}\n{worker_log.read_text()[-4000:]}"
        print(f"flow run {run_id} completed through the worker in {seconds:.0f} s")
        versions = json.loads((workspace / "datasets" / "versions.json").read_text())
        assert [version["number"] for version in versions] == [1]
        md5 = versions[0]["md5"]
        keys = [
            item["Key"] for item in s3.list_objects_v2(Bucket="shared-data").get("Contents", [])
        ]
        assert f"dvc/files/md5/{md5[:2]}/{md5[2:]}" in keys
        assert not any((workspace / "dvc-remote").rglob("*")), "pushed to the local folder"
