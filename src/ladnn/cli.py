"""The `ladnn` command line."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ladnn.config import LadnnCfg, config_to_dict, load_config
from ladnn.workspace import WORKSPACE_ENV, Workspace

app = typer.Typer(
    help="LA-DNN continual-learning platform: import and version chest-CT data, train, evaluate "
    "and register models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(
    help="Import a batch of images into the versioned dataset.", no_args_is_help=True
)
data_app = typer.Typer(help="Inspect dataset versions.", no_args_is_help=True)
config_app = typer.Typer(help="Show the resolved configuration.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

console = Console()
logger = logging.getLogger("ladnn")

_QUIET_LOGGERS = ("mlflow", "alembic", "urllib3", "httpx", "prefect", "dvc", "PIL", "matplotlib")


@dataclass
class Context:
    workspace: Workspace
    config_path: Path | None
    overrides: list[str]
    profile: str | None

    def config(self, extra: list[str] | None = None) -> LadnnCfg:
        return load_config(self.config_path, [*self.overrides, *(extra or [])], self.profile)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[
            RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        ],
        force=True,
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(help=f"Folder for all local state; default ${WORKSPACE_ENV} or ./workspace."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML configuration file.", exists=True)
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one setting, e.g. --set train.epochs=5."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Configuration profile: short, cpu or paper.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    _configure_logging(verbose)
    space = Workspace.resolve(workspace).ensure()
    os.environ[WORKSPACE_ENV] = str(space.root)
    os.environ.setdefault("PREFECT_HOME", str(space.prefect_home))
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    ctx.obj = Context(space, config, list(overrides or []), profile)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


@app.command()
def cycle(
    ctx: typer.Context,
    release: Annotated[
        Path | None, typer.Option(help="COVID-CT release folder; default $LADNN_DATASETS/covid-ct.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training run.")] = False,
) -> None:
    """Run one whole cycle: import, check, version, train, evaluate and register (a Prefect flow)."""
    state: Context = ctx.obj
    extra = [f"data.release={release.resolve()}"] if release else []
    cfg = state.config(extra)
    from ladnn.cycle import format_summary
    from pipelines.cycle import cycle_flow

    try:
        summary = cycle_flow(
            config_path=str(state.config_path) if state.config_path else None,
            overrides=[*state.overrides, *extra],
            profile=cfg.profile,
            workspace=str(state.workspace.root),
            resume=resume,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(format_summary(summary))


@import_app.command("release")
def import_release_command(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="COVID-CT release folder; default $LADNN_DATASETS/covid-ct."),
    ] = None,
) -> None:
    """Import the COVID-CT release with LA-DNN's lesion labels and make a dataset version."""
    from ladnn.cycle import import_release, version_dataset
    from ladnn.data.release import RELEASE_BATCH_ID

    state: Context = ctx.obj
    cfg = state.config([f"data.release={path.resolve()}"] if path else [])
    try:
        report = import_release(cfg, state.workspace, progress=sys.stderr.isatty())
        version, created = version_dataset(cfg, state.workspace, RELEASE_BATCH_ID)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(report.summary())
    console.print(
        f"dataset version {version.name} ({'new' if created else 'unchanged'}), {version.n_images} images"
    )


@data_app.command("versions")
def data_versions(ctx: typer.Context) -> None:
    """List dataset versions with counts per label and split."""
    from ladnn.data.versioning import list_versions

    state: Context = ctx.obj
    table = Table(
        "version", "created", "images", "COVID", "negative", "train", "val", "test", "md5"
    )
    for version in list_versions(state.workspace):
        counts = version.counts
        table.add_row(
            version.name,
            version.created_at,
            str(version.n_images),
            str(counts["label_1"]),
            str(counts["label_0"]),
            str(counts["split_train"]),
            str(counts["split_val"]),
            str(counts["split_test"]),
            version.md5,
        )
    console.print(table)


@app.command()
def train(
    ctx: typer.Context,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run with the same settings.")
    ] = False,
    register: Annotated[
        bool, typer.Option(help="Register the model as a pending candidate.")
    ] = True,
) -> None:
    """Train LA-DNN on the latest dataset version and log the run to MLflow."""
    from ladnn.cycle import data_root, register_run
    from ladnn.data.store import DatasetStore
    from ladnn.data.versioning import latest_version
    from ladnn.training.run import run_training

    state: Context = ctx.obj
    cfg = state.config()
    version = latest_version(state.workspace)
    if version is None:
        _fail("no dataset version in this workspace: run `ladnn import release` first")
    run = run_training(
        cfg,
        state.workspace,
        DatasetStore(data_root(cfg)),
        version,
        resume=resume,
        progress=sys.stderr.isatty(),
    )
    test = run.test.metrics
    console.print(
        f"run {run.run_id}: test AUC {test['auc']:.3f} "
        f"(95% CI {test['auc_ci_low']:.3f}-{test['auc_ci_high']:.3f}), "
        f"sensitivity {test['sensitivity']:.3f}, specificity {test['specificity']:.3f}"
    )
    if register:
        number = register_run(cfg, state.workspace, run)
        console.print(
            f"registered {cfg.tracking.registered_model} version {number} (pending review)"
        )


@app.command()
def models(ctx: typer.Context) -> None:
    """List registered model versions with their review state and test metrics."""
    from mlflow.tracking import MlflowClient

    from ladnn.tracking.store import configure_mlflow

    state: Context = ctx.obj
    cfg = state.config()
    configure_mlflow(cfg, state.workspace)
    client = MlflowClient()
    name = cfg.tracking.registered_model
    table = Table(
        "version",
        "aliases",
        "review",
        "dataset",
        "backbone",
        "variant",
        "test AUC (95% CI)",
        "created",
    )
    versions = client.search_model_versions(f"name = '{name}'")
    for version in sorted(versions, key=lambda v: int(v.version)):
        tags = version.tags
        table.add_row(
            str(version.version),
            ", ".join(version.aliases or []),
            tags.get("review_state", ""),
            tags.get("dataset_version", ""),
            tags.get("backbone", ""),
            tags.get("variant", ""),
            f"{tags.get('test_auc', '')} {tags.get('test_auc_ci', '')}",
            str(version.creation_timestamp),
        )
    console.print(table)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the resolved configuration as YAML."""
    state: Context = ctx.obj
    try:
        cfg = state.config()
    except ValueError as err:
        _fail(str(err))
    console.print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), markup=False)


if __name__ == "__main__":
    app()
