"""Helpers shared by the benchmark scripts: machine description, load average, medians, output.

Every script prints a JSON document on stdout (and writes it to `--output` when given) that contains
the machine it ran on and, next to every figure, the 1-minute load average when it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "REPOSITORY",
    "add_common_arguments",
    "datasets_dir",
    "load_average",
    "machine_info",
    "median",
    "percentile",
    "stopwatch",
    "write_result",
]

REPOSITORY = Path(__file__).resolve().parents[1]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: few images, one repeat, seconds to minutes.",
    )
    parser.add_argument("--output", type=Path, help="Also write the JSON result to this file.")
    parser.add_argument(
        "--datasets",
        type=Path,
        default=None,
        help="Folder with covid-ct/; default $LADNN_DATASETS or ../shared/datasets.",
    )


def datasets_dir(option: Path | None) -> Path:
    """Resolve the real-data folder as the project does, and fail with the fix when it is missing."""
    from ladnn.workspace import default_datasets_dir

    folder = option or default_datasets_dir()
    if not (folder / "covid-ct").is_dir():
        raise SystemExit(
            f"no covid-ct/ under {folder}: pass --datasets or set LADNN_DATASETS to the folder "
            "that contains the COVID-CT release"
        )
    return folder


def load_average() -> float:
    """Return the 1-minute load average (first field of /proc/loadavg)."""
    return os.getloadavg()[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Describe the machine: cores, CPU model, RAM, torch version and its intra-op threads."""
    import psutil
    import torch

    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) with linear interpolation between ranks."""
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """Measure the wall time of a block into `["seconds"]`, with the load average at its start."""
    record = {"load_average_1min": load_average()}
    started = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = time.perf_counter() - started


def write_result(result: dict, output: Path | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
