"""Time `ladnn import release` of the COVID-CT release into a fresh data root, then once more.

The first import decodes, measures, validates and encodes all 746 images and records version v1
with DVC, so its rate is images per second of a whole import. The second import of the same
release finds every image already present: it decodes and checks each file again, compares the
batch with the dataset's reference metrics and records nothing. Each repeat starts from a new
data root and workspace under `--root`.

    .venv/bin/python bench/import_release.py                 # 3 repeats
    .venv/bin/python bench/import_release.py --repeats 1
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import add_common_arguments, datasets_dir, machine_info, median, write_result
from time_to_model import run_ladnn

from ladnn.data.store import DatasetStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="Fresh imports (3).")
    parser.add_argument("--root", type=Path, help="Folder for the data roots (default /tmp).")
    args = parser.parse_args()
    datasets = datasets_dir(args.datasets)
    repeats = args.repeats or (1 if args.quick else 3)
    folder = args.root or Path(f"/tmp/ladnn-bench/import-release-{time.strftime('%H%M%S')}")
    machine = machine_info()

    runs = []
    for repeat in range(repeats):
        root = folder / f"run-{repeat + 1}"
        root.mkdir(parents=True)
        run = {}
        for name in ("first", "again"):
            _, seconds, _ = run_ladnn(["import", "release"], root, datasets)
            run[f"{name}_seconds"] = seconds
        run["images"] = len(DatasetStore(root).read_metadata())
        run["first_images_per_second"] = run["images"] / run["first_seconds"]
        runs.append(run)
        print(f"repeat {repeat + 1}: {run}", flush=True)
        shutil.rmtree(root)

    result = {
        "benchmark": "import_release",
        "machine": machine,
        "repeats": repeats,
        "runs": runs,
        "median_first_seconds": median([run["first_seconds"] for run in runs]),
        "median_again_seconds": median([run["again_seconds"] for run in runs]),
    }
    write_result(result, args.output)


if __name__ == "__main__":
    main()
