"""The `cycle` flow: ingest one batch, check the images, train LA-DNN, register and review it."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from ladnn.config import LadnnCfg
from ladnn.continual import plan_training
from ladnn.cycle import CycleSummary, check_images, data_root, register_run
from ladnn.data.operations import find_version
from ladnn.data.store import DatasetStore
from ladnn.registry.workflow import open_registry
from ladnn.tracking.store import tracking_uri_for
from ladnn.training.run import TrainingRun, run_training
from ladnn.workspace import Workspace, release_dir
from pipelines.common import resolve
from pipelines.ingest import ingest_flow
from pipelines.review import review_flow

__all__ = ["cycle_flow"]


@task(name="check-images")
def check_images_task(cfg: LadnnCfg) -> int:
    count = check_images(DatasetStore(data_root(cfg)))
    get_run_logger().info("all %d images decode", count)
    return count


@task(name="train-ladnn")
def train_task(
    cfg: LadnnCfg, workspace: Workspace, dataset_version: str, resume: bool, progress: bool
) -> TrainingRun:
    store = DatasetStore(data_root(cfg))
    plan = plan_training(
        cfg,
        workspace,
        store,
        open_registry(cfg, workspace),
        mode=cfg.continual.mode,
        replay_fraction=cfg.continual.replay_fraction,
    )
    run = run_training(
        plan.cfg,
        workspace,
        store,
        find_version(workspace, dataset_version),
        resume=resume,
        progress=progress,
        initial_state=plan.initial_state,
        train_ids=plan.train_ids,
        extra_tags=plan.tags,
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


@flow(name="cycle")
def cycle_flow(
    source: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
    resume: bool = False,
    progress: bool = True,
    review: bool = True,
) -> CycleSummary:
    """Run one whole cycle for the batch at `source` (default: the COVID-CT release): ingest and
    version it, check every image decodes, train the configured LA-DNN variant, register it, and
    compare it with the champion (`review`), marking it challenger when its gates pass."""
    cfg, space = resolve(config_path, overrides, profile, workspace)
    batch = source or str(release_dir(cfg))
    ingested = ingest_flow(
        source=batch,
        config_path=config_path,
        overrides=overrides,
        profile=profile,
        workspace=str(space.root),
    )
    check_images_task(cfg)
    run = train_task(cfg, space, ingested["dataset_version"], resume, progress)
    model_version = register_task(cfg, space, run)
    outcome = None
    if review:
        outcome = review_flow(
            candidates=[model_version],
            config_path=config_path,
            overrides=overrides,
            profile=profile,
            workspace=str(space.root),
        )
    version = find_version(space, ingested["dataset_version"])
    return CycleSummary(
        dataset_version=version.name,
        dataset_created=ingested["created"],
        n_images=version.n_images,
        images_added=ingested["added"],
        run_id=run.run_id,
        model_name=cfg.tracking.registered_model,
        model_version=model_version,
        run=run,
        tracking_uri=tracking_uri_for(cfg, space),
        review=outcome,
    )
