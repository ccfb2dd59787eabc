"""The `cycle` flow: import the release, check and version it, train LA-DNN, register the model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from ladnn.config import LadnnCfg, load_config
from ladnn.cycle import (
    CycleSummary,
    check_images,
    data_root,
    import_release,
    register_run,
)
from ladnn.data.operations import BatchImport
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DatasetVersion
from ladnn.tracking.store import tracking_uri_for
from ladnn.training.run import TrainingRun, run_training
from ladnn.workspace import Workspace

__all__ = ["cycle_flow"]


@task(name="import-release", retries=1, retry_delay_seconds=5)
def import_release_task(cfg: LadnnCfg, workspace: Workspace) -> BatchImport:
    result = import_release(cfg, workspace, progress=False)
    logger = get_run_logger()
    logger.info(result.report.summary())
    state = "created" if result.created else "reused unchanged"
    logger.info("dataset version %s %s (%d images)", result.version.name, state, result.version.n_images)
    return result


@task(name="check-images")
def check_images_task(cfg: LadnnCfg) -> int:
    count = check_images(DatasetStore(data_root(cfg)))
    get_run_logger().info("all %d images decode", count)
    return count


@task(name="train-ladnn")
def train_task(
    cfg: LadnnCfg, workspace: Workspace, version: DatasetVersion, resume: bool, progress: bool
) -> TrainingRun:
    run = run_training(
        cfg, workspace, DatasetStore(data_root(cfg)), version, resume=resume, progress=progress
    )
    test = run.test.metrics
    get_run_logger().info(
        "run %s: test AUC %.3f (%.3f-%.3f)",
        run.run_id,
        test["auc"],
        test["auc_ci_low"],
        test["auc_ci_high"],
    )
    return run


@task(name="register-model", retries=2, retry_delay_seconds=[2, 10])
def register_task(cfg: LadnnCfg, workspace: Workspace, run: TrainingRun) -> str:
    version = register_run(cfg, workspace, run)
    get_run_logger().info("registered %s version %s", cfg.tracking.registered_model, version)
    return version


@flow(name="cycle", log_prints=False)
def cycle_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> CycleSummary:
    """Run one whole cycle on the COVID-CT release with the resolved configuration.

    Parameters: `config_path` (YAML file), `overrides` (`section.key=value` strings), `profile`
    (short, cpu or paper), `workspace` (folder of all local state), `resume` (continue an
    interrupted training run).
    """
    cfg = load_config(config_path, overrides or [], profile)
    space = Workspace.resolve(Path(workspace) if workspace else None).ensure()
    imported = import_release_task(cfg, space)
    check_images_task(cfg)
    version = imported.version
    run = train_task(cfg, space, version, resume, progress)
    model_version = register_task(cfg, space, run)
    return CycleSummary(
        dataset_version=version.name,
        dataset_created=imported.created,
        n_images=version.n_images,
        images_added=len(imported.report.added),
        run_id=run.run_id,
        model_name=cfg.tracking.registered_model,
        model_version=model_version,
        run=run,
        tracking_uri=tracking_uri_for(cfg, space),
    )
