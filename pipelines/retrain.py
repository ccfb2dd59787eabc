"""The `retrain` flow: train LA-DNN variants on a dataset version and register each as a candidate,
then hand the candidates to the `review` flow."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ladnn.config import LadnnCfg, resume_identity
from ladnn.continual import plan_training
from ladnn.cycle import data_root, register_run
from ladnn.data.operations import find_version
from ladnn.data.store import DatasetStore
from ladnn.registry.workflow import open_registry
from ladnn.training.run import run_training
from ladnn.training.trainer import TrainingTimeout
from ladnn.workspace import Workspace
from pipelines.common import resolve
from pipelines.review import review_flow

__all__ = ["retrain_flow", "variant_config", "variant_task_runner", "train_variants_flow"]


def variant_config(cfg: LadnnCfg, variant: str) -> LadnnCfg:
    """Apply a `backbone:variant` string (e.g. `resnet18:baseline`) to the model section."""
    backbone, _, head = variant.partition(":")
    model = dataclasses.replace(
        cfg.model, backbone=backbone.strip(), variant=(head.strip() or cfg.model.variant)
    )
    return dataclasses.replace(cfg, model=model)


def _training_key(context: TaskRunContext, parameters: dict) -> str:
    """Cache key of a training task: its configuration, dataset version and continual mode."""
    cfg: LadnnCfg = parameters["cfg"]
    text = json.dumps(
        {
            "config": resume_identity(cfg),
            "dataset": parameters["dataset_version"],
            "workspace": str(parameters["workspace"].root),
        },
        sort_keys=True,
    )
    return "train-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _retry_unless_out_of_time(task, task_run, state) -> bool:
    """Retry a failed training (it resumes from its checkpoint), but not one that ran out of its
    `train.timeout_minutes`: a retry would get the whole limit again."""
    return not isinstance(state.result(raise_on_failure=False), TrainingTimeout)


@task(
    name="train-variant",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_retry_unless_out_of_time,
    cache_key_fn=_training_key,
    persist_result=True,
)
def train_variant_task(cfg: LadnnCfg, workspace: Workspace, dataset_version: str) -> dict:
    """Train (resuming an interrupted run of the same settings) and register one variant."""
    logger = get_run_logger()
    store = DatasetStore(data_root(cfg))
    version = find_version(workspace, dataset_version)
    registry = open_registry(cfg, workspace)
    plan = plan_training(
        cfg,
        workspace,
        store,
        registry,
        mode=cfg.continual.mode,
        replay_fraction=cfg.continual.replay_fraction,
    )
    run = run_training(
        plan.cfg,
        workspace,
        store,
        version,
        resume=True,
        progress=False,
        initial_state=plan.initial_state,
        train_ids=plan.train_ids,
        extra_tags=plan.tags,
    )
    model_version = register_run(plan.cfg, workspace, run)
    logger.info(
        "%s:%s (%s) -> version %s, validation AUC %.3f, test AUC %.3f",
        plan.cfg.model.backbone,
        plan.cfg.model.variant,
        plan.mode,
        model_version,
        run.validation.metrics["auc"],
        run.test.metrics["auc"],
    )
    return {
        "model_version": model_version,
        "run_id": run.run_id,
        "variant": f"{plan.cfg.model.backbone}:{plan.cfg.model.variant}",
        "val_auc": run.validation.metrics["auc"],
        "test_auc": run.test.metrics["auc"],
    }


def variant_task_runner(cfg: LadnnCfg) -> TaskRunner:
    """Return the task runner for variants: a Dask cluster at `servers.dask_address`, else
    `continual.max_parallel` threads of this process."""
    if cfg.servers.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=cfg.servers.dask_address)
    return ThreadPoolTaskRunner(max_workers=max(1, cfg.continual.max_parallel))


def _train_in_waves(configs: list[LadnnCfg], workspace: Workspace, version: str, width: int):
    results = []
    for start in range(0, len(configs), width):
        futures = [
            train_variant_task.submit(c, workspace, version) for c in configs[start : start + width]
        ]
        results.extend(future.result() for future in futures)
    return results


@flow(name="train-variants")
def train_variants_flow(
    configs: list[LadnnCfg], workspace: Workspace, dataset_version: str, width: int
) -> list[dict]:
    """Train and register the variants, `width` at a time, on this flow's task runner."""
    return _train_in_waves(configs, workspace, dataset_version, width)


@flow(name="retrain", task_runner=ThreadPoolTaskRunner(max_workers=4))
def retrain_flow(
    dataset_version: str = "latest",
    variants: list[str] | None = None,
    mode: str | None = None,
    review: bool = True,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
) -> dict:
    """Train each variant (`backbone:variant`; default the configured model) on `dataset_version`
    in `mode` (scratch or finetune; default continual.mode), register every candidate, and run the
    review flow on them. Up to `continual.max_parallel` variants train at once.

    With `servers.dask_address`, a `train-variants` subflow sends the variants to that Dask
    cluster (prefect-dask's DaskTaskRunner). Its workers need this package, the same environment
    (LADNN_SERVERS and credentials) and the workspace and data root at the same paths."""
    cfg, space = resolve(config_path, overrides, profile, workspace)
    if mode is not None:
        cfg = dataclasses.replace(cfg, continual=dataclasses.replace(cfg.continual, mode=mode))
    version = find_version(space, dataset_version).name
    chosen = (
        variants or list(cfg.continual.variants) or [f"{cfg.model.backbone}:{cfg.model.variant}"]
    )
    configs = [variant_config(cfg, variant) for variant in chosen]

    width = max(1, cfg.continual.max_parallel)
    if cfg.servers.dask_address:
        runner = variant_task_runner(cfg)
        results = train_variants_flow.with_options(task_runner=runner)(
            configs, space, version, width
        )
    else:
        results = _train_in_waves(configs, space, version, width)

    summary = {"dataset_version": version, "candidates": results}
    if review and results:
        summary["review"] = review_flow(
            candidates=[r["model_version"] for r in results],
            config_path=config_path,
            overrides=overrides,
            profile=profile,
            workspace=str(space.root),
        )
    return summary
