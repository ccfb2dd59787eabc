"""The `ladnn` command line."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
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
flows_app = typer.Typer(help="Run and serve the Prefect flows.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")
quarantine_app = typer.Typer(
    help="List and release files that the data-validation gate rejected.", no_args_is_help=True
)
app.add_typer(quarantine_app, name="quarantine")

# Lines are never folded at the terminal width, so file names and paths stay whole when the
# output is piped or read by a script.
console = Console(soft_wrap=True)
logger = logging.getLogger("ladnn")

_QUIET_LOGGERS = (
    "mlflow",
    "alembic",
    "urllib3",
    "httpx",
    "prefect",
    "dvc",
    "PIL",
    "matplotlib",
    "great_expectations",
)


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
        str | None, typer.Option(help="Configuration profile: short, cpu, paper or reproduce-cpu.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    _configure_logging(verbose)
    space = Workspace.resolve(workspace).ensure()
    space.export_environment(verbose=verbose)
    ctx.obj = Context(space, config, list(overrides or []), profile)
    # Before any command imports Prefect, which reads PREFECT_API_URL once.
    from ladnn.servers import apply_servers

    try:
        apply_servers(ctx.obj.config())
    except ValueError as err:
        _fail(str(err))


def _print_table(table) -> None:
    """Print `table` whole: a terminal wraps it to its width, but piped output would otherwise be
    cut at Rich's default of 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    console.print(table, width=max(natural, console.width))


def _fail(message: str) -> None:
    # Escaped, because file names and values in messages may contain "[...]".
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=1)


@app.command()
def cycle(
    ctx: typer.Context,
    release: Annotated[
        Path | None, typer.Option(help="COVID-CT release folder; default $LADNN_DATASETS/covid-ct.")
    ] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            help="Batch to ingest instead of the release: LA-DNN dated batch or contributed folder."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training run.")] = False,
) -> None:
    """Run one whole cycle: import, check, version, train, evaluate and register (a Prefect flow)."""
    state: Context = ctx.obj
    extra = [f"data.release={release.resolve()}"] if release else []
    try:
        cfg = state.config(extra)
    except ValueError as err:
        _fail(str(err))
    from ladnn.workspace import release_dir

    source = batch.resolve() if batch else release_dir(cfg)
    if not source.exists():
        _fail(f"batch not found at {source}: set --release, --batch or LADNN_DATASETS")
    from ladnn.warmup import open_tracking_store, start_prefect_server

    wait_for_prefect = start_prefect_server()
    from ladnn.cycle import format_summary
    from pipelines.cycle import cycle_flow

    open_tracking_store(cfg, state.workspace)
    wait_for_prefect()
    try:
        summary = cycle_flow(
            source=str(source),
            config_path=str(state.config_path) if state.config_path else None,
            overrides=[*state.overrides, *extra],
            profile=cfg.profile,
            workspace=str(state.workspace.root),
            resume=resume,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(format_summary(summary), soft_wrap=True, markup=False)


def _run_import(state: Context, batch_id: str, items: list) -> None:
    """Import items under the dataset lock, record the version and print what happened."""
    from ladnn.cycle import data_root
    from ladnn.data.operations import ImportLockedError, import_batch

    cfg = state.config()
    try:
        result = import_batch(
            data_root(cfg),
            state.workspace,
            batch_id,
            items,
            progress=sys.stderr.isatty(),
            servers=cfg.servers,
        )
    except (FileNotFoundError, ValueError, ImportLockedError) as err:
        _fail(str(err))
    report = result.report
    console.print(report.summary())
    if report.validation_id:
        console.print(f"validation {report.validation_id}: {report.validation_dir}", markup=False)
    for warning in report.warnings:
        console.print(f"  warning: {warning}", markup=False)
    for name, existing in report.duplicates:
        console.print(f"  duplicate: {name} has the same pixels as {existing}", markup=False)
    for name, reason in report.rejected:
        console.print(
            f"  rejected: {name}: {reason} (copied to {state.workspace.quarantine_dir / batch_id})",
            markup=False,
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
    from ladnn.data.release import RELEASE_BATCH_ID, read_release
    from ladnn.workspace import release_dir

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
    _print_table(table)


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
    """Train LA-DNN on the latest dataset version and log the run to MLflow.

    Under `torchrun --nproc-per-node N --no-python ladnn train`, N processes train with
    DistributedDataParallel and rank 0 logs, evaluates and registers the run.
    """
    from ladnn.cycle import data_root, register_run
    from ladnn.data.store import DatasetStore
    from ladnn.data.versioning import latest_version
    from ladnn.training.distributed import shutdown_distributed
    from ladnn.training.run import run_training

    state: Context = ctx.obj
    cfg = state.config()
    version = latest_version(state.workspace)
    if version is None:
        _fail("no dataset version in this workspace: run `ladnn import release` first")
    try:
        run = run_training(
            cfg,
            state.workspace,
            DatasetStore(data_root(cfg)),
            version,
            resume=resume,
            progress=sys.stderr.isatty(),
        )
    except ValueError as err:
        _fail(str(err))
    finally:
        shutdown_distributed()
    if run is None:
        # A rank other than 0 of torchrun: rank 0 reports and registers the run.
        return
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
def pretrain(
    ctx: typer.Context,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 30,
    batch_size: Annotated[
        int, typer.Option(min=2, help="Images per step; each gives two views.")
    ] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = 3e-4,
    temperature: Annotated[float, typer.Option(min=0.0, help="NT-Xent temperature.")] = 0.2,
    image_size: Annotated[int, typer.Option(min=32, help="Side of the views in pixels.")] = 160,
    probe_every: Annotated[
        int, typer.Option(min=0, help="Epochs between linear-probe scores; 0 for none.")
    ] = 5,
    keep: Annotated[
        str,
        typer.Option(
            help="Weights to write: 'best_probe' (the epoch with the best linear-probe "
            "validation AUC) or 'last'."
        ),
    ] = "best_probe",
    output: Annotated[
        Path | None,
        typer.Option(help="Weights file to write (default under <workspace>/pretrained/)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run with the same settings.")
    ] = False,
) -> None:
    """Pretrain the backbone contrastively (SimCLR) on the latest version's training images.

    No label is read. The weights start from `model.*` (ImageNet where available) and end in a
    safetensors file. Train LA-DNN from it with `--set model.weights_file=FILE`. Each run is
    logged to the MLflow experiment `<tracking.experiment>-pretraining`, with its loss and the
    validation AUC of a linear probe on the frozen features.
    """
    from ladnn.cycle import data_root
    from ladnn.data.store import DatasetStore
    from ladnn.data.versioning import latest_version
    from ladnn.training.contrastive import ContrastiveCfg, run_pretraining

    state: Context = ctx.obj
    cfg = state.config()
    version = latest_version(state.workspace)
    if version is None:
        _fail("no dataset version in this workspace: run `ladnn import release` first")
    try:
        settings = ContrastiveCfg(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            temperature=temperature,
            image_size=image_size,
            probe_every=probe_every,
            keep=keep,
        )
        outcome, run_id = run_pretraining(
            cfg,
            state.workspace,
            DatasetStore(data_root(cfg)),
            version,
            settings,
            output=output,
            resume=resume,
            progress=sys.stderr.isatty(),
        )
    except ValueError as err:
        _fail(str(err))
    probes = [record for record in outcome.history if "probe_val_auc" in record]
    probe_text = (
        f", linear-probe validation AUC {probes[0]['probe_val_auc']:.3f} at epoch "
        f"{probes[0]['epoch']} and {probes[-1]['probe_val_auc']:.3f} at epoch {probes[-1]['epoch']}"
        if len(probes) > 1
        else ""
    )
    console.print(
        f"run {run_id}: pretrained {cfg.model.backbone} for {epochs} epochs in "
        f"{outcome.seconds:.0f} s{probe_text}",
        markup=False,
    )
    console.print(f"weights: {outcome.weights_path} (epoch {outcome.kept_epoch})", markup=False)
    console.print(
        f"train from them with: --set model.weights_file={outcome.weights_path}", markup=False
    )


@app.command()
def models(ctx: typer.Context) -> None:
    """List registered model versions with their review state and test metrics."""
    from mlflow.tracking import MlflowClient

    from ladnn.tracking.store import configure_mlflow

    state: Context = ctx.obj
    cfg = state.config()
    configure_mlflow(cfg, state.workspace)
    _open_registry(state)
    client = MlflowClient()
    name = cfg.tracking.registered_model
    table = Table(
        "version",
        "aliases",
        "review",
        "gates",
        "dataset",
        "backbone",
        "variant",
        "test AUC (95% CI)",
        "created",
    )
    versions = client.search_model_versions(f"name = '{name}'")
    # Searched versions come without their aliases, so they are read from the registered model.
    aliases: dict[str, list[str]] = {}
    if versions:
        for alias, number in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(number), []).append(alias)
    for version in sorted(versions, key=lambda v: int(v.version)):
        tags = version.tags
        table.add_row(
            str(version.version),
            ", ".join(sorted(aliases.get(str(version.version), []))),
            tags.get("review_state", ""),
            tags.get("gate_state", "-"),
            tags.get("dataset_version", ""),
            tags.get("backbone", ""),
            tags.get("variant", ""),
            f"{tags.get('test_auc', '')} {tags.get('test_auc_ci', '')}",
            datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
        )
    _print_table(table)


def _flow_arguments(state: Context) -> dict:
    return {
        "config_path": str(state.config_path) if state.config_path else None,
        "overrides": state.overrides,
        "profile": state.profile,
        "workspace": str(state.workspace.root),
    }


@flows_app.command("ingest")
def flows_ingest(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="Batch: release folder, LA-DNN dated batch, or folder/zip.")
    ],
    label: Annotated[
        str | None,
        typer.Option(help="Label for contributed images without one: covid or negative."),
    ] = None,
) -> None:
    """Run the ingest flow on one batch: import, validate, version, measure drift, emit events."""
    from ladnn.warmup import start_prefect_server

    wait_for_prefect = start_prefect_server()
    from ladnn.data.contributions import parse_label
    from pipelines.ingest import ingest_flow

    batch_label = _read_or_fail(parse_label, label, "--label") if label is not None else None
    wait_for_prefect()
    try:
        result = ingest_flow(
            source=str(path.resolve()), label=batch_label, **_flow_arguments(ctx.obj)
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(result)


@flows_app.command("retrain")
def flows_retrain(
    ctx: typer.Context,
    dataset_version: Annotated[str, typer.Option(help="Dataset version to train on.")] = "latest",
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Variant as backbone:variant, e.g. resnet18:baseline; repeat for several."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="scratch (ImageNet start, all data) or finetune (champion, new data + replay)."
        ),
    ] = None,
    review: Annotated[bool, typer.Option(help="Run the review flow on the candidates.")] = True,
) -> None:
    """Run the retrain flow: train variants, register each, then review the best."""
    from ladnn.warmup import open_tracking_store, start_prefect_server

    wait_for_prefect = start_prefect_server()
    from pipelines.retrain import retrain_flow

    open_tracking_store(ctx.obj.config(), ctx.obj.workspace)
    wait_for_prefect()
    try:
        result = retrain_flow(
            dataset_version=dataset_version,
            variants=variant,
            mode=mode,
            review=review,
            **_flow_arguments(ctx.obj),
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(result)


@flows_app.command("review")
def flows_review(
    ctx: typer.Context,
    candidates: Annotated[list[str], typer.Argument(help="Candidate model versions.")],
    wait: Annotated[
        bool,
        typer.Option(
            help="Pause until a reviewer decides (dashboard, `ladnn promote/reject` or the "
            "Prefect UI)."
        ),
    ] = False,
) -> None:
    """Run the review flow: compare the best candidate with the champion and apply the gates."""
    from ladnn.warmup import open_tracking_store, start_prefect_server

    wait_for_prefect = start_prefect_server()
    from pipelines.review import review_flow

    open_tracking_store(ctx.obj.config(), ctx.obj.workspace)
    wait_for_prefect()
    try:
        result = review_flow(
            candidates=candidates, wait_for_decision=wait, **_flow_arguments(ctx.obj)
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(result)


@flows_app.command("serve")
def flows_serve(
    ctx: typer.Context,
    inbox_interval: Annotated[
        float, typer.Option(help="Seconds between scans of <workspace>/inbox/.")
    ] = 60.0,
    retrain_on: Annotated[
        str,
        typer.Option(
            help="Event that starts retraining: 'version' (every new dataset version) or "
            "'drift' (only a batch that drifted from the training data)."
        ),
    ] = "version",
    stale_after: Annotated[
        float,
        typer.Option(
            help="Seconds without a heartbeat after which a running flow run counts as crashed."
        ),
    ] = 120.0,
    max_restarts: Annotated[
        int, typer.Option(help="Times in a row a crashed retrain or cycle run is started again.")
    ] = 2,
) -> None:
    """Serve the deployments (inbox schedule, retrain on new dataset versions) against the Prefect
    server at $PREFECT_API_URL; start one with `prefect server start`.

    Flow runs send heartbeats. A run that stops sending them is marked Crashed, and a crashed
    retrain or cycle run is started again, resuming from its checkpoint."""
    from pipelines.recovery import HEARTBEAT_SECONDS
    from pipelines.serve import serve_flows

    state: Context = ctx.obj
    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, so deployments and their runs persist"
        )
    (state.workspace.root / "inbox").mkdir(parents=True, exist_ok=True)
    console.print(f"serving flows; drop batches into {state.workspace.root / 'inbox'}")
    if retrain_on not in ("version", "drift"):
        _fail(f"--retrain-on must be 'version' or 'drift', not {retrain_on!r}")
    heartbeat = int(os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") or HEARTBEAT_SECONDS)
    if stale_after <= heartbeat:
        _fail(
            f"--stale-after must be longer than the heartbeat interval ({heartbeat} s, "
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY), or every running flow run would count as crashed"
        )
    serve_flows(
        str(state.workspace.root),
        inbox_interval,
        state.overrides,
        retrain_on,
        state.profile,
        str(state.config_path.resolve()) if state.config_path else None,
        stale_after=stale_after,
        max_restarts=max_restarts,
    )


@app.command()
def serve(
    ctx: typer.Context,
    alias: Annotated[str, typer.Option(help="Registry alias to serve.")] = "champion",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 5001,
) -> None:
    """Serve a registered version (the champion by default) over REST with MLflow's model server.

    POST /invocations with {"dataframe_split": {"columns": ["image"], "data": [[<base64 PNG>]]}};
    each response row contains `model_version`.
    """
    import subprocess

    from ladnn.tracking.pyfunc import SERVED_VERSION_ENV

    state: Context = ctx.obj
    registry = _open_registry(state)
    try:
        version = registry.client.get_model_version_by_alias(registry.name, alias).version
    except Exception:  # noqa: BLE001 - MLflow raises its generic exception for a missing alias
        _fail(f"model {registry.name} has no version with alias {alias!r}; promote one first")
    # MLflow starts `uvicorn` by name; the interpreter's own bin folder must be on PATH even when
    # the virtual environment is not activated.
    scripts = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        SERVED_VERSION_ENV: f"{registry.name}/{version}",
        "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]),
    }
    console.print(
        f"serving {registry.name} version {version} ({alias}) on http://{host}:{port}/invocations"
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{registry.name}/{version}",
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise typer.Exit(subprocess.call(command, env=environment))


def _open_registry(state: Context):
    from ladnn.registry.workflow import open_registry

    return open_registry(state.config(), state.workspace)


@app.command()
def compare(
    ctx: typer.Context,
    candidate: Annotated[str, typer.Argument(help="Candidate model version.")],
    champion: Annotated[
        str | None, typer.Argument(help="Version to compare with; default the champion.")
    ] = None,
    propose: Annotated[
        bool, typer.Option(help="Mark the candidate challenger when its gates pass.")
    ] = True,
) -> None:
    """Compare a candidate with the champion on the same frozen test images and apply the gates."""
    from ladnn.cycle import data_root
    from ladnn.data.store import DatasetStore
    from ladnn.registry.review import ReviewError
    from ladnn.registry.workflow import compare_versions

    state: Context = ctx.obj
    cfg = state.config()
    try:
        report, markdown = compare_versions(
            cfg, state.workspace, DatasetStore(data_root(cfg)), candidate, champion, propose=propose
        )
    except (ReviewError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(markdown, markup=False, soft_wrap=True)
    if report.gates_passed:
        console.print(
            f"gates passed; version {candidate} is the challenger" if propose else "gates passed"
        )
    else:
        console.print(f"gates failed; version {candidate} can be promoted only with --override")


def _review_action(action, *args, **kwargs) -> None:
    from ladnn.registry.audit import ConcurrentReviewError
    from ladnn.registry.review import ReviewError
    from ladnn.registry.waiting import resume_waiting_review

    try:
        event = action(*args, **kwargs)
    except (ReviewError, ConcurrentReviewError) as err:
        _fail(str(err))
    console.print(
        f"#{event.seq} {event.action}: {event.from_version or '-'} -> {event.to_version or '-'} "
        f"by {event.reviewer} ({event.created_at})"
    )
    if event.action in ("promote", "reject"):
        resumed = resume_waiting_review(action.__self__, event.to_version, event)
        if resumed:
            console.print(f"resumed the review flow run {resumed} that waited for this decision")


@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reviewer: Annotated[str, typer.Option(help="Name of the reviewer who approves.")],
    reason: Annotated[str, typer.Option(help="Why the version is approved.")],
    override: Annotated[
        bool, typer.Option(help="Promote although gates failed or are missing; recorded.")
    ] = False,
) -> None:
    """Make a version the champion after review; the decision goes to the audit log."""
    registry = _open_registry(ctx.obj)
    _review_action(registry.promote, version, reviewer=reviewer, reason=reason, override=override)


@app.command()
def reject(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Model version to reject.")],
    reviewer: Annotated[str, typer.Option(help="Name of the reviewer who rejects.")],
    reason: Annotated[str, typer.Option(help="Why the version is rejected.")],
) -> None:
    """Record a reviewer's rejection of a candidate."""
    registry = _open_registry(ctx.obj)
    _review_action(registry.reject, version, reviewer=reviewer, reason=reason)


@app.command()
def rollback(
    ctx: typer.Context,
    reviewer: Annotated[str, typer.Option(help="Name of the reviewer who rolls back.")],
    reason: Annotated[str, typer.Option(help="Why the champion is rolled back.")],
) -> None:
    """Move the champion back to the version it replaced; audited."""
    registry = _open_registry(ctx.obj)
    _review_action(registry.rollback, reviewer=reviewer, reason=reason)


@app.command()
def audit(ctx: typer.Context) -> None:
    """Print the audit log of review decisions."""
    registry = _open_registry(ctx.obj)
    table = Table("#", "when", "action", "from", "to", "reviewer", "reason", "comparison")
    for event in registry.audit.events(registry.name):
        table.add_row(
            str(event.seq),
            event.created_at,
            event.action + (" (override)" if event.details.get("override") else ""),
            event.from_version or "-",
            event.to_version or "-",
            event.reviewer,
            event.reason,
            event.comparison or "-",
        )
    _print_table(table)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the resolved configuration as YAML."""
    state: Context = ctx.obj
    try:
        cfg = state.config()
    except ValueError as err:
        _fail(str(err))
    console.print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), markup=False)


def _load_model_or_fail(state: Context, version: str | None = None, run_id: str | None = None):
    """Load the requested model, else `champion`, else the latest version; exit 1 if none."""
    from ladnn.evaluation.registered import ModelNotFoundError, load_model

    try:
        return load_model(state.config(), state.workspace, version=version, run_id=run_id)
    except (ModelNotFoundError, ValueError) as err:
        _fail(str(err))


def _image_error(path: Path, err: Exception) -> str:
    """Format a one-line error that names the file and why it could not be used."""
    if isinstance(err, OSError):
        return f"{path}: cannot read file ({err.strerror or err})"
    message = str(err)
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _number(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


_MODEL_VERSION_HELP = "Registered model version; default the champion, else the latest version."


@app.command()
def evaluate(
    ctx: typer.Context,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help=_MODEL_VERSION_HELP)
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="MLflow run whose logged model to evaluate instead."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Split to evaluate: test, val, train or all.")
    ] = "test",
    dataset_version: Annotated[
        str | None,
        typer.Option(help="Dataset version whose rows to use, e.g. v2; default the current data."),
    ] = None,
) -> None:
    """Evaluate a model on one split: metrics with a 95% CI, calibration and per-slice metrics."""
    from ladnn.cycle import data_root
    from ladnn.data.store import DatasetStore
    from ladnn.evaluation.registered import evaluate_split, select_split

    state: Context = ctx.obj
    cfg = state.config()
    if model_version is not None and run_id is not None:
        _fail("give either --model-version or --run-id, not both")
    store = DatasetStore(data_root(cfg))
    try:
        frame, source = select_split(store, state.workspace, split, dataset_version)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    loaded = _load_model_or_fail(state, model_version, run_id)
    evaluation = evaluate_split(
        loaded,
        store,
        frame,
        split,
        state.workspace.cache_dir,
        n_resamples=cfg.eval.bootstrap,
        seed=cfg.eval.seed,
    )

    metrics = evaluation.result.metrics
    positives = int(frame["label"].sum())
    console.print(f"model: {loaded.description}", markup=False, soft_wrap=True)
    console.print(
        f"data: split {split} of the {source}: {len(frame)} images ({positives} COVID, "
        f"{len(frame) - positives} negative); the model was trained on dataset "
        f"{loaded.spec.get('dataset_version', 'unknown')}",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"threshold {loaded.threshold:.3f} (the model's own, set when it was trained)",
        soft_wrap=True,
    )
    table = Table("metric", "value")
    table.add_row(
        "AUC (95% CI)",
        f"{_number(metrics['auc'])} ({_number(metrics['auc_ci_low'])}-"
        f"{_number(metrics['auc_ci_high'])})",
    )
    for key, label in (
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("precision", "precision"),
        ("f1", "F1"),
        ("accuracy", "accuracy"),
        ("sensitivity_at_90_specificity", "sensitivity at 90% specificity"),
        ("sensitivity_at_95_specificity", "sensitivity at 95% specificity"),
        ("ece", "ECE (10 bins)"),
    ):
        table.add_row(label, _number(metrics[key]))
    table.add_row(
        "TP / FP / TN / FN",
        f"{metrics['tp']} / {metrics['fp']} / {metrics['tn']} / {metrics['fn']}",
    )
    for key, value in metrics.items():
        if key.startswith("lesion_"):
            table.add_row(f"{key.removeprefix('lesion_').removesuffix('_auc')} AUC", _number(value))
    _print_table(table)

    console.print("Metrics per slice (AUC is n/a for a slice with one class):")
    console.print(
        evaluation.slices.to_string(index=False, na_rep="n/a", float_format="{:.3f}".format),
        markup=False,
        soft_wrap=True,
    )
    for note in evaluation.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command()
def explain(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG, ...).")],
    model_version: Annotated[
        str | None, typer.Option("--model-version", help=_MODEL_VERSION_HELP)
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for the overlay PNGs; default ./gradcam/<image name>."),
    ] = None,
) -> None:
    """Write Grad-CAM++ overlays of the COVID-19 output and each lesion output for one image."""
    from ladnn.evaluation.explain import explain_image, save_overlays
    from ladnn.evaluation.registered import diagnose_image

    state: Context = ctx.obj
    loaded = _load_model_or_fail(state, model_version)
    try:
        diagnosis = diagnose_image(loaded, image)
        explanation = explain_image(
            loaded.model,
            loaded.backbone_spec,
            image,
            image_size=int(loaded.spec["image_size"]),
        )
    except (OSError, ValueError) as err:
        _fail(_image_error(image, err))
    folder = output or Path("gradcam") / image.name
    paths = save_overlays(explanation, folder)
    console.print(f"model: {loaded.description}", markup=False, soft_wrap=True)
    decision = "COVID-19 positive" if diagnosis.positive else "negative"
    console.print(
        f"{image}: COVID-19 probability {diagnosis.covid_probability:.3f} -> {decision} "
        f"at threshold {loaded.threshold:.3f}",
        markup=False,
        soft_wrap=True,
    )
    for name, path in paths.items():
        console.print(
            f"  {name:<9} probability {diagnosis.probabilities[name]:.3f}  overlay {path}",
            markup=False,
            soft_wrap=True,
        )


@app.command()
def diagnose(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
    model_version: Annotated[
        str | None, typer.Option("--model-version", help=_MODEL_VERSION_HELP)
    ] = None,
) -> None:
    """Print each image's COVID-19 probability, decision and lesion probabilities.

    A file that cannot be read or decoded gets a one-line error and the others are still scored;
    the exit code is then 1.
    """
    from ladnn.evaluation.registered import diagnose_image, lesion_names

    state: Context = ctx.obj
    loaded = _load_model_or_fail(state, model_version)
    console.print(
        f"model: {loaded.description}, threshold {loaded.threshold:.3f}",
        markup=False,
        soft_wrap=True,
    )
    lesions = lesion_names(loaded)
    failed = 0
    for path in images:
        try:
            diagnosis = diagnose_image(loaded, path)
        except (OSError, ValueError) as err:
            failed += 1
            console.print(f"error: {_image_error(path, err)}", markup=False, soft_wrap=True)
            continue
        decision = "COVID-19 positive" if diagnosis.positive else "negative"
        lesion_text = (
            ", ".join(f"{name} {diagnosis.probabilities[name]:.3f}" for name in lesions)
            if lesions
            else "none (baseline model without a lesion head)"
        )
        console.print(
            f"{path}: COVID-19 probability {diagnosis.covid_probability:.3f} -> {decision}; "
            f"lesion probabilities: {lesion_text}",
            markup=False,
            soft_wrap=True,
        )
    if failed:
        console.print(f"{failed} of {len(images)} image(s) failed", soft_wrap=True)
        raise typer.Exit(code=1)


@app.command()
def validate(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="Release folder, LA-DNN dated batch folder or zip, or contributed folder or zip."
        ),
    ],
    kind: Annotated[
        str, typer.Option(help="Batch layout: auto, release, ladnn-batch or folder.")
    ] = "auto",
    label: Annotated[
        str | None,
        typer.Option(
            help="Label for contributed images without one in the CSV: covid or negative."
        ),
    ] = None,
    max_rejected: Annotated[
        float,
        typer.Option(help="Maximum fraction (0-1) of rejected rows before the whole batch fails."),
    ] = 0.5,
) -> None:
    """Run the data-validation gate on a batch without importing it.

    Prints the verdict, the rejected files with their reasons, the warnings and where the Data
    Docs are.

    Exits with code 1 when a batch-level check fails, so the batch would not be imported.
    """
    from ladnn.cycle import data_root
    from ladnn.data.contributions import parse_label
    from ladnn.data.importer import validate_items
    from ladnn.data.layouts import read_batch
    from ladnn.data.store import DatasetStore
    from ladnn.validation import ValidationSettings

    state: Context = ctx.obj
    batch_label = _read_or_fail(parse_label, label, "--label") if label is not None else None
    batch_id, items = _read_or_fail(read_batch, path, kind, label=batch_label)
    try:
        result = validate_items(
            items,
            DatasetStore(data_root(state.config())),
            batch_id,
            validation_dir=state.workspace.validation_dir,
            settings=ValidationSettings(max_rejected_fraction=max_rejected),
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(result.summary(), markup=False, soft_wrap=True)
    console.print(f"result: {result.directory / 'result.json'}", markup=False, soft_wrap=True)
    if result.docs_path is not None:
        console.print(f"Data Docs: {result.docs_path}", markup=False, soft_wrap=True)
    if not result.success:
        raise typer.Exit(code=1)


@quarantine_app.command("list")
def quarantine_list(ctx: typer.Context) -> None:
    """List quarantined files with their batch, file name and reasons."""
    from ladnn.validation import list_quarantine

    state: Context = ctx.obj
    entries = list_quarantine(state.workspace.quarantine_dir)
    for entry in entries:
        lines = [
            entry.entry_id,
            f"  batch {entry.batch_id}, file {entry.file_name}, "
            f"validation {entry.record.get('validation_id') or '-'}",
            *(f"  - {reason['expectation']}: {reason['detail']}" for reason in entry.reasons),
        ]
        console.print("\n".join(lines), markup=False, soft_wrap=True)
    console.print(
        f"{len(entries)} quarantined file(s) in {state.workspace.quarantine_dir}",
        markup=False,
        soft_wrap=True,
    )


@quarantine_app.command("release")
def quarantine_release(
    ctx: typer.Context,
    entry_id: Annotated[
        str, typer.Argument(metavar="ID", help="Quarantine id as `ladnn quarantine list` shows it.")
    ],
) -> None:
    """Validate a fixed quarantined file again and import it if it now passes.

    Fix the file by replacing it in the quarantine folder, or its fields by editing `item` in its
    `.reason.json`, before releasing it.
    """
    from ladnn.cycle import data_root
    from ladnn.data.operations import ImportLockedError
    from ladnn.validation import release_entry

    state: Context = ctx.obj
    try:
        cfg = state.config()
        outcome = release_entry(data_root(cfg), state.workspace, entry_id, servers=cfg.servers)
    except (FileNotFoundError, ValueError, ImportLockedError) as err:
        _fail(str(err))
    report = outcome.result.report
    if not outcome.released:
        console.print(f"{entry_id} still fails validation {report.validation_id}:", markup=False)
        for _name, reason in report.rejected:
            console.print(f"  {reason}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1)
    version = outcome.result.version
    what = "imported" if report.added else "already in the dataset"
    console.print(
        f"released {entry_id}: {what}; dataset version {version.name} "
        f"({'new' if outcome.result.created else 'unchanged'}), validation {report.validation_id}",
        markup=False,
    )


dashboard_app = typer.Typer(
    help="Start the Streamlit dashboard, or manage its users.", invoke_without_command=True
)
app.add_typer(dashboard_app, name="dashboard")


def _checkout_root() -> Path:
    """Return the source checkout that contains `dashboards/`, which the wheel does not include."""
    import ladnn

    return Path(ladnn.__file__).resolve().parents[2]


def _dashboard_auth():
    root = _checkout_root()
    if not (root / "dashboards" / "auth.py").is_file():
        _fail(f"the dashboard is not in {root / 'dashboards'}: run ladnn from a source checkout")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from dashboards import auth

    return auth


@dashboard_app.callback()
def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="TCP port to serve on.")] = 8501,
    address: Annotated[
        str, typer.Option(help="Address to bind; the default serves this machine only.")
    ] = "localhost",
) -> None:
    """Serve the dashboard on http://ADDRESS:PORT, reading this workspace and configuration."""
    if ctx.invoked_subcommand is not None:
        return
    import json
    import subprocess

    from ladnn.cycle import data_root

    state: Context = ctx.obj
    cfg = state.config()
    script = _checkout_root() / "dashboards" / "app.py"
    if not script.is_file():
        _fail(f"dashboard script not found at {script}: run ladnn from a source checkout")
    auth = _dashboard_auth()
    users_file = auth.users_file_path(state.workspace.root)
    if not users_file.is_file():
        console.print(
            f"no dashboard users in {users_file}: add one with "
            "`ladnn dashboard add-user NAME --role reviewer`",
            markup=False,
        )
    environment = {
        **os.environ,
        WORKSPACE_ENV: str(state.workspace.root),
        "LADNN_CONFIG": str(state.config_path.resolve()) if state.config_path else "",
        "LADNN_PROFILE": state.profile or "",
        # The data root is resolved here, so the dashboard does not depend on its working folder.
        "LADNN_OVERRIDES": json.dumps([*state.overrides, f"data.root={data_root(cfg)}"]),
        "LADNN_DASHBOARD_USERS": str(users_file),
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # Hide Streamlit's developer menu and Deploy button from reviewers.
        "--client.toolbarMode",
        "minimal",
    ]
    console.print(f"dashboard: http://{address}:{port} (Ctrl+C stops it)", markup=False)
    try:
        result = subprocess.run(command, env=environment, check=False)
    except KeyboardInterrupt:
        return
    if result.returncode != 0:
        raise typer.Exit(code=result.returncode)


@dashboard_app.command("add-user")
def dashboard_add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name for signing in.")],
    role: Annotated[
        str, typer.Option(help="reviewer (may approve, reject, roll back) or analyst (read-only).")
    ],
    replace: Annotated[
        bool, typer.Option(help="Change the role and password of an existing user.")
    ] = False,
) -> None:
    """Add a dashboard user to $LADNN_DASHBOARD_USERS or <workspace>/dashboard-users.yaml.

    The password is read from a hidden prompt and stored as a salted scrypt hash.
    """
    auth = _dashboard_auth()
    if role not in auth.ROLES:
        _fail(f"invalid role {role!r}: expected one of {list(auth.ROLES)}")
    state: Context = ctx.obj
    path = auth.users_file_path(state.workspace.root)
    try:
        exists = name in auth.load_users(path)
    except auth.UsersFileError as err:
        _fail(str(err))
    if exists and not replace:
        _fail(f"user {name!r} already exists in {path}; pass --replace to change it")
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        existed = auth.add_user(path, name, role, password, replace=replace)
    except auth.UsersFileError as err:
        _fail(str(err))
    console.print(f"{'updated' if existed else 'added'} {role} {name} in {path}", markup=False)


from ladnn.reproduce.command import reproduce as _reproduce  # noqa: E402

app.command("reproduce")(_reproduce)


if __name__ == "__main__":
    app()
