"""Time from `ladnn train` to a registered model, its test AUC, and the peak memory of training.

The COVID-CT release is imported first into a fresh data root and workspace under /tmp (timed
apart, as setup). Then `ladnn --profile PROFILE train` runs under `/usr/bin/time -v`, which gives
its wall time and its peak resident set size. The test AUC and the registered version are read
from the command's output. The first run decodes the images into the workspace's image cache;
later repeats reuse it.

    .venv/bin/python bench/time_to_model.py --profile short
    .venv/bin/python bench/time_to_model.py --quick            # 1 epoch at 64 px
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

from common import (
    REPOSITORY,
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    median,
    write_result,
)

from ladnn.config import PROFILES

LADNN = REPOSITORY / ".venv" / "bin" / "ladnn"
AUC_LINE = re.compile(
    r"test AUC (?P<auc>[0-9.]+|nan) \(95% CI (?P<low>[0-9.]+|nan)-(?P<high>[0-9.]+|nan)\)"
)
REGISTERED_LINE = re.compile(r"registered (?P<name>\S+) version (?P<version>\d+)")
TARGET_AUC = 0.90


def run_ladnn(
    arguments: list[str], root: Path, datasets: Path, *, timed: bool = False
) -> tuple[str, float, dict[str, str]]:
    """Run `ladnn` in `root`; return its output, wall seconds and `/usr/bin/time -v` fields."""
    environment = {**os.environ, "LADNN_DATASETS": str(datasets), "PYTHONUNBUFFERED": "1"}
    environment.pop("LADNN_SERVERS", None)
    command = [str(LADNN), "--workspace", str(root / "workspace"), "--set", f"data.root={root}"]
    command += arguments
    if timed:
        command = ["/usr/bin/time", "-v", *command]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=root, env=environment, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    fields = {}
    if timed:
        for line in result.stderr.splitlines():
            name, _, value = line.strip().partition(": ")
            if value:
                fields[name] = value
    return result.stdout + result.stderr, seconds, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--profile", default="short", choices=PROFILES)
    parser.add_argument("--repeats", type=int, default=1, help="Training runs (default 1).")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="Data root to create (default /tmp/ladnn-bench/time-to-model-<time>); its "
        "workspace/ keeps the registered models for bench/diagnose_latency.py.",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    datasets = datasets_dir(args.datasets)
    root = args.root or Path(f"/tmp/ladnn-bench/time-to-model-{time.strftime('%H%M%S')}")
    root.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["train.epochs=1", "train.image_size=64", "eval.bootstrap=100"]
    settings = ["--profile", args.profile, *[item for o in overrides for item in ("--set", o)]]

    machine = machine_info()
    import_load = load_average()
    _, import_seconds, _ = run_ladnn(["import", "release"], root, datasets)

    runs = []
    for repeat in range(args.repeats):
        load = load_average()
        output, seconds, fields = run_ladnn([*settings, "train"], root, datasets, timed=True)
        auc = AUC_LINE.search(output)
        registered = REGISTERED_LINE.search(output)
        if auc is None or registered is None:
            raise SystemExit(f"no test AUC or registered version in the output:\n{output[-3000:]}")
        runs.append(
            {
                "repeat": repeat + 1,
                "image_cache": "cold" if repeat == 0 else "warm",
                "wall_seconds": seconds,
                "test_auc": float(auc["auc"]),
                "test_auc_ci": [float(auc["low"]), float(auc["high"])],
                "registered_version": registered["version"],
                "peak_rss_mib": int(fields["Maximum resident set size (kbytes)"]) / 1024,
                "user_seconds": float(fields["User time (seconds)"]),
                "system_seconds": float(fields["System time (seconds)"]),
                "load_average_1min": load,
            }
        )
        print(runs[-1], flush=True)

    result = {
        "benchmark": "time_to_model",
        "machine": machine,
        "profile": args.profile,
        "overrides": overrides,
        "root": str(root),
        "workspace": str(root / "workspace"),
        "import_release": {"seconds": import_seconds, "load_average_1min": import_load},
        "runs": runs,
        "median_wall_seconds": median([run["wall_seconds"] for run in runs]),
        "median_test_auc": median([run["test_auc"] for run in runs]),
        "target_auc": TARGET_AUC,
        "target_auc_reached": all(run["test_auc"] >= TARGET_AUC for run in runs),
        "load_average_1min_end": load_average(),
    }
    write_result(result, args.output)


if __name__ == "__main__":
    main()
