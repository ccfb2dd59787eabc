"""A retraining run whose worker is killed is marked Crashed, then started again and resumed.

`ladnn flows serve` runs against a Prefect server on a fresh PostgreSQL database. The test starts
a retraining run on the real release and kills the serving process group with SIGKILL once the
first epoch checkpoint is on disk. It waits for the server's automation to mark the silent run
Crashed. Then it starts `ladnn flows serve` again and waits for the replacement run to finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from live_servers import BIN, postgres_database, postgres_url, prefect_server, running_server
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from ladnn.tracking.store import mlflow_client
from pipelines.recovery import ATTEMPT_TAG, REPLACED_TAG

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]
STALE_AFTER_S = 70
TRAINING = [
    "train.epochs=4",
    "train.image_size=64",
    "train.batch_size=32",
    "eval.bootstrap=50",
    "gates.min_sensitivity=0",
]


def _wait(predicate, timeout: float, failure: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log and log.is_file() else ""
    pytest.fail(f"{failure} within {timeout:.0f} s\n{tail}")


def _run_state(run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def test_killed_retrain_crashed_then_resumed(tmp_path, release_dir):
    root = tmp_path / "root"
    workspace = tmp_path / "workspace"
    settings = [
        "--workspace",
        str(workspace),
        "--set",
        f"data.root={root}",
        "--set",
        f"data.release={release_dir}",
        *[part for setting in TRAINING for part in ("--set", setting)],
    ]
    with (
        postgres_database("ladnn_crash") as database,
        prefect_server(postgres_url(database, "asyncpg"), tmp_path / "server") as api,
        temporary_settings({PREFECT_API_URL: api}),
    ):
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        imported = subprocess.run(
            [str(BIN / "ladnn"), *settings, "import", "release"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert imported.returncode == 0, imported.stdout + imported.stderr
        serve = [
            str(BIN / "ladnn"),
            *settings,
            "flows",
            "serve",
            "--inbox-interval",
            "3600",
            "--stale-after",
            str(STALE_AFTER_S),
        ]
        first_log = tmp_path / "serve-1.log"
        with running_server(serve, f"{api}/health", first_log, env, REPO_ROOT) as first:
            with get_client(sync_client=True) as client:
                deployment = _wait(
                    lambda: next(
                        (
                            d
                            for d in client.read_deployments()
                            if d.name == "retrain" and d.parameters.get("workspace")
                        ),
                        None,
                    ),
                    120,
                    "the retrain deployment was not served",
                    first_log,
                )
                run = client.create_flow_run_from_deployment(
                    deployment.id, parameters={"dataset_version": "v1"}
                )
            checkpoints = workspace / "checkpoints"
            _wait(
                lambda: any(checkpoints.glob("*.pt")),
                900,
                "no training checkpoint was written",
                first_log,
            )
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        assert any(checkpoints.glob("*.pt")), "training finished before the kill"
        assert _run_state(run.id).state.type == StateType.RUNNING

        crashed = _wait(
            lambda: (state := _run_state(run.id)).state.type == StateType.CRASHED and state,
            STALE_AFTER_S + 180,
            "the server's automation did not mark the silent run Crashed",
        )
        assert f"No heartbeat for {STALE_AFTER_S} s" in crashed.state.message

        second_log = tmp_path / "serve-2.log"
        with running_server(serve, f"{api}/health", second_log, env, REPO_ROOT):
            replaced = _wait(
                lambda: next(
                    (t for t in _run_state(run.id).tags if t.startswith(REPLACED_TAG)), None
                ),
                180,
                "the crashed run was not started again",
                second_log,
            )
            new_run_id = replaced.removeprefix(REPLACED_TAG)
            finished = _wait(
                lambda: (state := _run_state(new_run_id)).state.is_final() and state,
                1200,
                "the restarted run did not finish",
                second_log,
            )
        assert finished.state.type == StateType.COMPLETED, finished.state.message
        assert f"{ATTEMPT_TAG}1" in finished.tags
        assert finished.parameters["dataset_version"] == "v1"
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[finished.id])),
                limit=200,
            )
        assert any("resumed from" in log.message for log in logs), [log.message for log in logs]

    tracking = mlflow_client(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}")
    experiment_ids = [e.experiment_id for e in tracking.search_experiments()]
    training_runs = [
        r
        for r in tracking.search_runs(experiment_ids)
        if r.data.tags.get("dataset_version") == "v1" and r.data.tags.get("backbone")
    ]
    assert len({r.info.run_id for r in training_runs}) == 1, training_runs
    assert training_runs[0].info.status == "FINISHED"
    assert tracking.search_model_versions(), "the resumed run registered no model"
