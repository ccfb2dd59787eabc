"""Retraining variants on a Dask cluster through prefect-dask's DaskTaskRunner.

A local Dask cluster (scheduler and one worker process on this machine) replaces a shared one.
The retrain flow reaches it by `servers.dask_address`, and the variant trains and registers in
the worker process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import LocalCluster
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from ladnn.config import load_config
from ladnn.data.importer import import_items
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import commit_version
from ladnn.tracking.store import mlflow_client
from ladnn.workspace import Workspace
from pipelines.retrain import retrain_flow, variant_task_runner

PER_LABEL = {"train": 6, "val": 4, "test": 4}
TINY = [
    "train.epochs=1",
    "train.image_size=32",
    "train.batch_size=8",
    "train.threads=1",
    "eval.bootstrap=20",
    "model.pretrained=false",
]


def test_runner_follows_dask_address():
    runner = variant_task_runner(load_config(overrides=["servers.dask_address=tcp://dask:8786"]))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://dask:8786"


def test_runner_without_dask_uses_threads():
    runner = variant_task_runner(load_config(overrides=["continual.max_parallel=3"]))
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def _small_dataset(release_dir: Path, root: Path, workspace: Workspace) -> None:
    picked: dict[tuple[str, int], int] = {}
    chosen = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if picked.get(key, 0) < PER_LABEL[item.split]:
            picked[key] = picked.get(key, 0) + 1
            chosen.append(item)
    import_items(chosen, DatasetStore(root), RELEASE_BATCH_ID, progress=False)
    commit_version(root, workspace, RELEASE_BATCH_ID, git_tag=False)


@pytest.mark.servers
def test_retrain_variant_on_dask_worker(tmp_path, release_dir):
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    _small_dataset(release_dir, root, workspace)

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        prefect_test_harness(server_startup_timeout=120),
    ):
        summary = retrain_flow(
            variants=["resnet18:baseline"],
            review=False,
            overrides=[
                *TINY,
                f"data.root={root}",
                f"servers.dask_address={cluster.scheduler_address}",
            ],
            workspace=str(workspace.root),
        )
        # Key prefixes of every task that the scheduler has seen, named after the functions.
        prefixes = sorted(cluster.scheduler.task_prefixes)

    [candidate] = summary["candidates"]
    assert candidate["variant"] == "resnet18:baseline"
    assert "train_variant_task" in prefixes
    client = mlflow_client(workspace.tracking_uri)
    version = client.get_model_version("ladnn", candidate["model_version"])
    assert version.tags["review_state"] == "pending"
    run = client.get_run(candidate["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["backbone"] == "resnet18"
