"""The `ladnn reproduce` command; `ladnn.cli` registers it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["reproduce"]

console = Console()


def _parse_backbones(values: list[str] | None) -> list[str] | None:
    """Split repeated or comma-separated backbone names and reject unknown ones."""
    if not values:
        return None
    from ladnn.models.backbones import BACKBONES

    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}: expected names from {sorted(BACKBONES)}")
    return names


def reproduce(
    ctx: typer.Context,
    version: Annotated[
        str, typer.Option("--version", help="Dataset version to train on: vN or latest.")
    ] = "latest",
    backbones: Annotated[
        list[str] | None,
        typer.Option(
            "--backbones",
            help="Backbones, comma-separated or repeated; default the seven of the LA-DNN paper "
            "(vgg16, resnet18, resnet50, densenet121, densenet169, efficientnet_b0, "
            "efficientnet_b1).",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Configuration profile (paper, reproduce-cpu, cpu, short); default the "
            "global --profile."
        ),
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            min=1,
            help="Child runs that train at once: several per GPU, 1 on a small CPU. On a CPU "
            "the cores are divided among them.",
        ),
    ] = 1,
) -> None:
    """Train each backbone as baseline and LA-DNN and print the paper's backbone table.

    One MLflow parent run contains a child run per (backbone, variant), and the table has the
    layout of Table 2 of Liu et al. 2020. Runs as a Prefect flow."""
    state = ctx.obj
    try:
        chosen = _parse_backbones(backbones)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
    from pipelines.reproduce import run_reproduce

    try:
        result = run_reproduce(
            max_parallel=parallel,
            dataset_version=version,
            backbones=chosen,
            config_path=str(state.config_path) if state.config_path else None,
            overrides=state.overrides,
            profile=profile or state.profile,
            workspace=str(state.workspace.root),
        )
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
    console.print(result["markdown"], markup=False, soft_wrap=True)
    console.print(f"parent MLflow run {result['parent_run_id']}", markup=False)
    if result["failed"]:
        console.print(f"failed: {', '.join(result['failed'])}", markup=False)
        raise typer.Exit(code=1)
    if sys.stdout.isatty():
        console.print("the table is logged as reproduce/table.md and reproduce/table.json")
