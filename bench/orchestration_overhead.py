"""Overhead of Prefect and MLflow: one cycle as a flow against the same steps called directly.

Three ways of running one cycle on the COVID-CT release, each in a new process on its own copy of
one prepared data root (release imported, image cache filled):

- `flow`: `pipelines.cycle.cycle_flow` (review off), what `ladnn cycle` runs: Prefect tasks with
  a temporary Prefect server (or the running server given by `--prefect-api-url`), MLflow
  tracking and registration. As in `ladnn cycle`, the temporary server starts in a thread while
  the flow's modules import and the tracking store opens (`ladnn.warmup`);
- `direct`: the same steps without Prefect: `import_release`, `check_images`, `run_training`
  (MLflow run with plots, Grad-CAM++ overlays and the logged model) and `register_run`;
- `bare`: the same work without Prefect and MLflow: `import_release`, `check_images`,
  `train_model`, then the validation and test scores and metrics.

The prepared root contains Prefect's database and MLflow's tracking store, as every cycle after a
workspace's first finds them. `--first-cycle` leaves both out, so each run creates them. The
import finds the release already present, so it decodes and checks every file but creates no
version and the ingest flow measures no drift. Each run reports its steps' time and its training
time; Prefect's cost is the difference of the time outside training between `flow` and `direct`,
MLflow's and the logged artifacts' between `direct` and `bare`, both against the median training
time.

    .venv/bin/python bench/orchestration_overhead.py             # 2 epochs, 2 repeats
    .venv/bin/python bench/orchestration_overhead.py --quick     # 1 epoch at 64 px, 1 repeat
    .venv/bin/python bench/orchestration_overhead.py --epochs 6  # the `short` profile's epochs
    .venv/bin/python bench/orchestration_overhead.py --prefect-api-url http://127.0.0.1:4200/api
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    median,
    write_result,
)

MODES = ("flow", "direct", "bare")
TARGET_FRACTION = 0.05


def child_config(root: Path, overrides: list[str]):
    from ladnn.config import load_config

    return load_config(profile="short", overrides=[f"data.root={root}", *overrides])


def run_flow(root: Path, release: Path, overrides: list[str]) -> float:
    # As `ladnn cycle` does: Prefect's temporary server starts while the flow's modules import
    # and the tracking store opens.
    from ladnn.warmup import open_tracking_store, start_prefect_server

    wait_for_prefect = start_prefect_server()
    from ladnn.workspace import Workspace
    from pipelines.cycle import cycle_flow

    open_tracking_store(child_config(root, overrides), Workspace(root / "workspace").ensure())
    wait_for_prefect()
    summary = cycle_flow(
        source=str(release),
        overrides=[f"data.root={root}", *overrides],
        profile="short",
        workspace=str(root / "workspace"),
        progress=False,
        review=False,
    )
    return summary.run.train_seconds


def run_direct(root: Path, overrides: list[str]) -> float:
    from ladnn.cycle import check_images, import_release, register_run
    from ladnn.data.store import DatasetStore
    from ladnn.training.run import run_training
    from ladnn.workspace import Workspace

    cfg = child_config(root, overrides)
    workspace = Workspace(root / "workspace").ensure()
    imported = import_release(cfg, workspace, progress=False)
    store = DatasetStore(root)
    check_images(store)
    run = run_training(cfg, workspace, store, imported.version, progress=False)
    register_run(cfg, workspace, run)
    return run.train_seconds


def run_bare(root: Path, overrides: list[str]) -> float:
    from ladnn.cycle import check_images, import_release
    from ladnn.data.store import DatasetStore
    from ladnn.evaluation.metrics import choose_threshold
    from ladnn.evaluation.report import evaluate_probabilities
    from ladnn.training.images import ImageCache
    from ladnn.training.trainer import predict, prepare_split, train_model
    from ladnn.workspace import Workspace

    cfg = child_config(root, overrides)
    workspace = Workspace(root / "workspace").ensure()
    import_release(cfg, workspace, progress=False)
    store = DatasetStore(root)
    check_images(store)
    frame = store.read_metadata()
    cache = ImageCache(store, workspace.cache_dir, cfg.train.image_size)
    splits = {
        split: prepare_split(frame[frame["split"] == split], cache)
        for split in ("train", "val", "test")
    }
    outcome = train_model(cfg, splits["train"], splits["val"], progress=False)
    mean, std = outcome.backbone.spec.mean, outcome.backbone.spec.std
    probabilities = {
        split: predict(outcome.model, splits[split].pixels, mean, std) for split in ("val", "test")
    }
    threshold = choose_threshold(
        splits["val"].frame["label"].to_numpy(), probabilities["val"][:, 0], "youden"
    )
    for split in ("val", "test"):
        evaluate_probabilities(
            splits[split].frame,
            probabilities[split],
            threshold=threshold,
            split=split,
            n_resamples=cfg.eval.bootstrap,
            seed=cfg.eval.seed,
        )
    return outcome.train_seconds


def child(mode: str, root: Path, release: Path, overrides: list[str]) -> None:
    """Run one mode in this process and print its timings as one JSON line."""
    from ladnn.workspace import Workspace

    # The settings that the `ladnn` entry point exports: no usage analytics from DVC and
    # Prefect's server, no MLflow download bars.
    Workspace(root / "workspace").export_environment()
    started = time.perf_counter()
    if mode == "flow":
        train_seconds = run_flow(root, release, overrides)
    elif mode == "direct":
        train_seconds = run_direct(root, overrides)
    else:
        train_seconds = run_bare(root, overrides)
    print(
        json.dumps({"steps_seconds": time.perf_counter() - started, "train_seconds": train_seconds})
    )


def prepare_template(
    template: Path, datasets: Path, overrides: list[str], existing_stores: bool
) -> None:
    """Import the release into `template` and fill the image cache for the configured size.

    With `existing_stores`, also create Prefect's database and MLflow's tracking store in the
    workspace, as every cycle after a workspace's first finds them."""
    from ladnn.cycle import import_release
    from ladnn.data.store import DatasetStore
    from ladnn.tracking.store import configure_mlflow
    from ladnn.training.images import ImageCache
    from ladnn.workspace import Workspace

    os.environ["LADNN_DATASETS"] = str(datasets)
    cfg = child_config(template, overrides)
    workspace = Workspace(template / "workspace").ensure()
    import_release(cfg, workspace, progress=False)
    store = DatasetStore(template)
    ImageCache(store, workspace.cache_dir, cfg.train.image_size).get(
        store.read_metadata()["image_id"].tolist()
    )
    if existing_stores:
        configure_mlflow(cfg, workspace)
        environment = {**os.environ, "PREFECT_HOME": str(template / "workspace" / "prefect")}
        environment.pop("PREFECT_API_URL", None)
        prefect = Path(sys.executable).with_name("prefect")
        subprocess.run(
            [str(prefect), "server", "database", "upgrade", "--yes"],
            env=environment,
            check=True,
            capture_output=True,
        )


def run_mode(
    mode: str, root: Path, datasets: Path, overrides: list[str], prefect_api_url: str | None
) -> dict:
    environment = {
        **os.environ,
        "LADNN_DATASETS": str(datasets),
        "PREFECT_HOME": str(root / "workspace" / "prefect"),
        # Prefect waits 20 s by default for its temporary server, which a loaded machine
        # exceeds; the wait counts in the flow's time either way.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    }
    environment.pop("PREFECT_API_URL", None)
    if prefect_api_url:
        environment["PREFECT_API_URL"] = prefect_api_url
    environment.pop("LADNN_SERVERS", None)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--root",
        str(root),
        *[item for override in overrides for item in ("--set", override)],
    ]
    load = load_average()
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=root, env=environment, capture_output=True, text=True, check=False
    )
    process_seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {**timings, "process_seconds": process_seconds, "load_average_1min": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="Runs of each mode (2).")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (2).")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help="Folder for the copies (default under /tmp).")
    parser.add_argument(
        "--prefect-api-url",
        help="Run the flows on this running Prefect server instead of a temporary one.",
    )
    parser.add_argument(
        "--first-cycle",
        action="store_true",
        help="Start each run without Prefect's database and MLflow's tracking store, as a "
        "workspace's first cycle does.",
    )
    args = parser.parse_args()
    datasets = datasets_dir(args.datasets)

    if args.child is not None:
        child(args.child, args.root, datasets / "covid-ct", args.overrides)
        return

    repeats = args.repeats or (1 if args.quick else 2)
    epochs = args.epochs or (1 if args.quick else 2)
    overrides = [f"train.epochs={epochs}", *args.overrides]
    if args.quick:
        overrides += ["train.image_size=64", "eval.bootstrap=100"]
    folder = args.root or Path(f"/tmp/ladnn-bench/orchestration-{time.strftime('%H%M%S')}")
    machine = machine_info()
    template = folder / "template"
    template.mkdir(parents=True)
    prepare_template(template, datasets, overrides, existing_stores=not args.first_cycle)

    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for mode in MODES:
            root = folder / f"{mode}-{repeat + 1}"
            shutil.copytree(template, root, symlinks=True)
            runs[mode].append(run_mode(mode, root, datasets, overrides, args.prefect_api_url))
            print(mode, runs[mode][-1], file=sys.stderr, flush=True)
            shutil.rmtree(root)

    steps = {mode: median([run["steps_seconds"] for run in runs[mode]]) for mode in MODES}
    # Time outside training, per run: the training time itself varies with the load between
    # runs, and the difference of two steps times would carry that variation.
    outside = {
        mode: median([run["steps_seconds"] - run["train_seconds"] for run in runs[mode]])
        for mode in MODES
    }
    training = median([run["train_seconds"] for mode in MODES for run in runs[mode]])
    prefect = outside["flow"] - outside["direct"]
    tracking = outside["direct"] - outside["bare"]
    result = {
        "benchmark": "orchestration_overhead",
        "machine": machine,
        "overrides": overrides,
        "repeats": repeats,
        "prefect_database_and_tracking_store": (
            "created by each run" if args.first_cycle else "present"
        ),
        "prefect_server": args.prefect_api_url or "temporary, started by each flow",
        "runs": runs,
        "median_steps_seconds": steps,
        "median_seconds_outside_training": outside,
        "median_train_seconds": training,
        "prefect_seconds": prefect,
        "mlflow_and_artifacts_seconds": tracking,
        "prefect_and_mlflow_fraction_of_training": (prefect + tracking) / training,
        "prefect_fraction_of_training": prefect / training,
        "mlflow_fraction_of_training": tracking / training,
        "target_fraction": TARGET_FRACTION,
        "load_average_1min_end": load_average(),
    }
    write_result(result, args.output)


if __name__ == "__main__":
    main()
