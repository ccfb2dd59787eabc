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


def _run_import(state: Context, batch_id: str, items: list) -> None:
    """Import items under the dataset lock, record the version and print what happened."""
    from ladnn.cycle import data_root
    from ladnn.data.operations import ImportLockedError, import_batch

    cfg = state.config()
    try:
        result = import_batch(
            data_root(cfg), state.workspace, batch_id, items, progress=sys.stderr.isatty()
        )
    except (FileNotFoundError, ValueError, ImportLockedError) as err:
        _fail(str(err))
    report = result.report
    console.print(report.summary())
    for name, existing in report.duplicates:
        console.print(f"  duplicate: {name} has the same pixels as {existing}")
    for _name, reason in report.rejected:
        console.print(
            f"  rejected: {reason} (copied to {state.workspace.quarantine_dir / batch_id})"
        )
    state_text = "new" if result.created else "unchanged"
    console.print(
        f"dataset version {result.version.name} ({state_text}): {result.version.n_images} images, "
        f"{result.version.counts['label_1']} COVID / {result.version.counts['label_0']} negative"
    )


def _read_or_fail(reader, *args, **kwargs):
    try:
        return reader(*args, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


@import_app.command("release")
def import_release_command(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="COVID-CT release folder; default $LADNN_DATASETS/covid-ct."),
    ] = None,
) -> None:
    """Import the COVID-CT release with LA-DNN's lesion labels, split and patients."""
    from ladnn.cycle import release_dir
    from ladnn.data.release import RELEASE_BATCH_ID, read_release

    state: Context = ctx.obj
    folder = path.resolve() if path else release_dir(state.config())
    items = _read_or_fail(read_release, folder)
    _run_import(state, RELEASE_BATCH_ID, items)


@import_app.command("ladnn-batch")
def import_ladnn_batch_command(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="Dated batch folder (e.g. new-data/5.16) or one class zip.")
    ],
    metadata: Annotated[
        list[Path] | None,
        typer.Option(
            help="LA-DNN metadata CSV; default: the CSVs beside the batch and one folder up."
        ),
    ] = None,
) -> None:
    """Import one of LA-DNN's dated batches: a zip per class matched against the metadata CSVs."""
    from ladnn.data.batches import read_ladnn_batch

    state: Context = ctx.obj
    batch_id, items = _read_or_fail(read_ladnn_batch, path, metadata)
    _run_import(state, batch_id, items)


@import_app.command("folder")
def import_folder_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Folder or zip of images.")],
    metadata: Annotated[
        Path | None,
        typer.Option(
            help="Metadata CSV (docs/data-format.md); default: the only CSV beside the images."
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Label for images without one in the CSV: covid or negative.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Source for rows without one (DOI or URL).")
    ] = None,
    batch_id: Annotated[str | None, typer.Option(help="Batch id; default contrib-<name>.")] = None,
    lesions_from_captions: Annotated[
        bool, typer.Option(help="Label lesions of COVID rows without labels from their captions.")
    ] = False,
) -> None:
    """Import a contributed folder or zip with a metadata CSV in the documented schema."""
    from ladnn.data.contributions import parse_label, read_contribution

    state: Context = ctx.obj
    batch_label = _read_or_fail(parse_label, label, "--label") if label is not None else None
    chosen_id, items = _read_or_fail(
        read_contribution,
        path,
        metadata=metadata,
        label=batch_label,
        source=source,
        batch_id=batch_id,
        lesions_from_captions=lesions_from_captions,
    )
    _run_import(state, chosen_id, items)


@import_app.command("upload")
def import_upload_command(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
    label: Annotated[str, typer.Option(help="Label of the uploaded images: covid or negative.")],
    patient: Annotated[
        str | None,
        typer.Option(help="Patient id shared by these images; default one patient per image."),
    ] = None,
    source: Annotated[str, typer.Option(help="Source of the images.")] = "upload",
) -> None:
    """Import single uploaded images with a label."""
    from ladnn.data.contributions import parse_label, read_uploads

    state: Context = ctx.obj
    batch_label = _read_or_fail(parse_label, label, "--label")
    batch_id, items = _read_or_fail(
        read_uploads, files, label=batch_label, patient_id=patient, source=source
    )
    _run_import(state, batch_id, items)


@data_app.command("captions")
def data_captions(
    meta_info: Annotated[
        Path | None,
        typer.Option(
            help="LA-DNN metadata file with captions and hand labels; default the release's."
        ),
    ] = None,
) -> None:
    """Measure the caption-to-lesion rules against LA-DNN's hand labels (precision, recall, F1)."""
    from ladnn.data.captions import evaluate_extractor
    from ladnn.workspace import default_datasets_dir

    path = (
        meta_info
        or default_datasets_dir() / "covid-ct" / "lesion-labels" / "COVID-CT-MetaInfo_new.csv"
    )
    if not path.is_file():
        _fail(f"metadata file not found: {path}")
    console.print(evaluate_extractor(path).round(3).to_string(), markup=False)


@data_app.command("diff")
def data_diff(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="Older version, e.g. v1.")],
    new: Annotated[str, typer.Argument(help="Newer version, e.g. v2 or latest.")],
    files: Annotated[bool, typer.Option(help="List every added and removed file.")] = False,
) -> None:
    """Show what a version added, removed or changed compared with another."""
    from ladnn.data.operations import diff_versions

    state: Context = ctx.obj
    try:
        diff = diff_versions(state.workspace, old, new)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(diff.summary(), markup=False)
    if files:
        for name in diff.added["file_name"]:
            console.print(f"+ {name}", markup=False)
        for name in diff.removed["file_name"]:
            console.print(f"- {name}", markup=False)


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
            version.created_at[:10],
            str(version.n_images),
            str(counts["label_1"]),
            str(counts["label_0"]),
            str(counts["split_train"]),
            str(counts["split_val"]),
            str(counts["split_test"]),
            version.md5[:12],
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
