"""The `reproduce` flow: train every chosen backbone as baseline and LA-DNN on one dataset version,
as one MLflow parent run with a nested child run per (backbone, variant), and log the backbone table.

The child runs fan out through the flow's task runner; `run_reproduce` sets how many run at once.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from ladnn.config import LadnnCfg
from ladnn.cycle import data_root
from ladnn.data.operations import find_version
from ladnn.data.store import DatasetStore
from ladnn.reproduce.runs import (
    PAPER_BACKBONES,
    build_table,
    finish_parent_run,
    pair_config,
    prepare_images,
    start_parent_run,
    threads_per_run,
    train_child,
    version_image_ids,
)
from ladnn.reproduce.table import VARIANTS
from ladnn.tracking.store import mlflow_client, tracking_uri_for
from ladnn.workspace import Workspace
from pipelines.common import resolve

__all__ = ["reproduce_flow", "run_reproduce"]


@task(name="prepare-images")
def prepare_images_task(cfg: LadnnCfg, workspace: Workspace, image_ids: set[str]) -> int:
    return prepare_images(cfg, workspace, DatasetStore(data_root(cfg)), image_ids)


@task(name="train-child")
def train_child_task(
    cfg: LadnnCfg,
    workspace: Workspace,
    dataset_version: str,
    parent_run_id: str,
    image_ids: set[str],
) -> str:
    """Train one (backbone, variant) as a child run of the parent; return its MLflow run id."""
    logger = get_run_logger()
    version = find_version(workspace, dataset_version)
    run_id = train_child(
        cfg, workspace, DatasetStore(data_root(cfg)), version, parent_run_id, image_ids
    )
    logger.info("%s:%s -> MLflow run %s", cfg.model.backbone, cfg.model.variant, run_id)
    return run_id


@flow(name="reproduce", task_runner=ThreadPoolTaskRunner(max_workers=1))
def reproduce_flow(
    dataset_version: str = "latest",
    backbones: list[str] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
    max_parallel: int = 1,
) -> dict:
    """Train each backbone (default: the paper's seven) as baseline and LA-DNN on
    `dataset_version`, log a child run per pair under one parent run, and log the table to it.

    `max_parallel` only sizes the torch threads of each CPU run; the task runner's `max_workers`
    sets how many pairs train at once (see `run_reproduce`).
    """
    logger = get_run_logger()
    cfg, space = resolve(config_path, overrides, profile, workspace)
    chosen = list(dict.fromkeys(backbones or PAPER_BACKBONES))
    store = DatasetStore(data_root(cfg))
    version = find_version(space, dataset_version)
    image_ids = version_image_ids(space, version, store)
    threads = threads_per_run(cfg, max_parallel)

    # Child runs read the image cache concurrently, so it is filled once before they start.
    prepare_images_task(cfg, space, image_ids)
    parent_run_id = start_parent_run(cfg, space, version, chosen)
    logger.info(
        "reproduce on %s: %d backbone(s), parent MLflow run %s",
        version.name,
        len(chosen),
        parent_run_id,
    )

    client = mlflow_client(tracking_uri_for(cfg, space))
    children: dict[tuple[str, str], str | Exception] = {}
    try:
        futures = {
            (backbone, variant): train_child_task.submit(
                pair_config(cfg, backbone, variant, threads),
                space,
                version.name,
                parent_run_id,
                image_ids,
            )
            for backbone in chosen
            for variant in VARIANTS
        }
        for pair, future in futures.items():
            try:
                children[pair] = future.result()
            except Exception as err:  # noqa: BLE001 - a failed pair is reported in the table
                logger.error("%s:%s failed: %s", *pair, err)
                children[pair] = err
        table = build_table(client, cfg, parent_run_id, version, children)
        failed = any(isinstance(outcome, Exception) for outcome in children.values())
        markdown = finish_parent_run(client, table, failed=failed)
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    logger.info("logged the backbone table to parent run %s", parent_run_id)
    return {
        "parent_run_id": parent_run_id,
        "dataset_version": version.name,
        "markdown": markdown,
        "table": table.to_dict(),
        "failed": sorted(f"{b}:{v}" for (b, v), o in children.items() if isinstance(o, Exception)),
    }


def run_reproduce(max_parallel: int = 1, **arguments) -> dict:
    """Run `reproduce_flow` with `max_parallel` child runs training at once (several per GPU, or
    1 on a small CPU)."""
    if max_parallel < 1:
        raise ValueError(f"invalid max_parallel {max_parallel}: expected 1 or more")
    runner = ThreadPoolTaskRunner(max_workers=max_parallel)
    return reproduce_flow.with_options(task_runner=runner)(max_parallel=max_parallel, **arguments)
