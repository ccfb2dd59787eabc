"""Import and validation throughput on a synthetic dataset, and the cost of adding a small batch.

The synthetic images are augmented copies of the COVID-CT release. Each copy is flipped or not,
rotated by up to 7 degrees, cropped to 88-98% of each side and changed in brightness and contrast
by up to 10%, so its content hash differs from the original's. A copy keeps its original's label,
lesions, patient and official split, so the validation gate checks the same patients again and no
leakage across patients or splits. The copies are written once as JPEG files under
`/tmp/ladnn-bench/synthetic` (reused by later runs) and never enter the project.

A fresh data root (a git repository, as the project's checkout is) and workspace are grown by
`ladnn.data.operations.import_batch`, the function behind `ladnn import`, to each size in
`--sizes`. At each size, batches of `--add` new images are imported `--add-repeats` times. Every
import is timed in phases (decode and measure, reference metrics, validation gate, store commit,
DVC add or staging, DVC push, git) by timing wrappers around the project's own functions. After
each bulk import the validation reference cache is filled (timed apart), so that every added
batch measures only the batch before it.

    .venv/bin/python bench/import_scaling.py                          # 1,000, 3,000, 10,000
    .venv/bin/python bench/import_scaling.py --quick                  # 100 and 300
    .venv/bin/python bench/import_scaling.py --dvc-commands           # `dvc add` and `dvc push`
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import logging
import math
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from common import (
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    median,
    write_result,
)
from PIL import Image, ImageEnhance, ImageOps

import ladnn.data.importer as importer
import ladnn.data.operations as operations
import ladnn.data.versioning as versioning
from ladnn.data.importer import ImportItem
from ladnn.data.release import read_release
from ladnn.data.store import DatasetStore
from ladnn.workspace import Workspace

SYNTHETIC_DIR = Path("/tmp/ladnn-bench/synthetic")


def augment(data: bytes, seed: int) -> bytes:
    """Return an augmented JPEG copy of an image: flip, rotation, crop, brightness, contrast."""
    generator = random.Random(seed)
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if generator.random() < 0.5:
        image = ImageOps.mirror(image)
    image = image.rotate(generator.uniform(-7, 7), resample=Image.Resampling.BILINEAR)
    width, height = image.size
    keep_x, keep_y = generator.uniform(0.88, 0.98), generator.uniform(0.88, 0.98)
    left = generator.uniform(0, 1 - keep_x) * width
    top = generator.uniform(0, 1 - keep_y) * height
    image = image.crop((left, top, left + keep_x * width, top + keep_y * height))
    image = ImageEnhance.Brightness(image).enhance(generator.uniform(0.9, 1.1))
    image = ImageEnhance.Contrast(image).enhance(generator.uniform(0.9, 1.1))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def synthetic_items(release: Path, count: int) -> tuple[list[ImportItem], float]:
    """Return `count` augmented copies as import items, one variant of the whole release after
    another, and the seconds spent writing the files that did not exist yet."""
    originals = read_release(release)
    items = []
    written_seconds = 0.0
    for variant in range(1, math.ceil(count / len(originals)) + 1):
        folder = SYNTHETIC_DIR / f"copy{variant:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index, original in enumerate(originals):
            if len(items) == count:
                break
            stem = Path(original.file_name).stem.replace("%", "_")
            path = folder / f"{stem}.jpg"
            if not path.is_file():
                started = time.perf_counter()
                path.write_bytes(augment(original.read_bytes(), variant * 100_000 + index))
                written_seconds += time.perf_counter() - started
            items.append(
                dataclasses.replace(
                    original,
                    file_name=f"copy{variant:02d}-{stem}.jpg",
                    read_bytes=path.read_bytes,
                )
            )
    return items, written_seconds


class PhaseTimer:
    """Seconds spent in named project functions, accumulated while `import_batch` runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started

        setattr(owner, name, timed)

    def wrap_dvc(self) -> None:
        original = versioning._dvc

        @functools.wraps(original)
        def timed(args: list[str], cwd: Path) -> str:
            started = time.perf_counter()
            try:
                return original(args, cwd)
            finally:
                label = f"dvc {args[0]}" if args[0] in ("add", "push") else "dvc setup"
                self.seconds[label] += time.perf_counter() - started

        versioning._dvc = timed

    def take(self) -> dict[str, float]:
        """Return the seconds accumulated since the last call and start again from zero."""
        accumulated = dict(self.seconds)
        self.seconds.clear()
        return accumulated


def instrument() -> PhaseTimer:
    timer = PhaseTimer()
    timer.wrap(DatasetStore, "remove_orphans", "remove orphans")
    timer.wrap(importer, "decode_batch", "decode and measure")
    timer.wrap(importer, "load_reference_metrics", "reference metrics")
    timer.wrap(importer, "validate_batch", "validation gate")
    timer.wrap(DatasetStore, "commit", "store commit")
    timer.wrap(versioning, "_tag_in_git", "git commit and tag")
    timer.wrap(versioning, "_configure_dvc", "dvc setup")
    # After the first version, DVC's work runs in process. Staging counts as `dvc add` and the
    # transfer of the changed objects as `dvc push`.
    timer.wrap(versioning, "stage_data", "dvc add")
    timer.wrap(versioning, "record_snapshot", "dvc add")
    timer.wrap(versioning, "push_staged", "dvc push")
    timer.wrap_dvc()
    return timer


def import_timed(
    root: Path, workspace: Workspace, batch_id: str, items: list[ImportItem], timer: PhaseTimer
) -> dict:
    load = load_average()
    timer.take()
    started = time.perf_counter()
    outcome = operations.import_batch(
        root, workspace, batch_id, items, progress=False, wait_seconds=0
    )
    seconds = time.perf_counter() - started
    phases = timer.take()
    report = outcome.report
    gate_seconds = phases.get("validation gate", math.nan)
    return {
        "batch": batch_id,
        "files": len(items),
        "added": len(report.added),
        "rejected": len(report.rejected),
        "duplicates": len(report.duplicates),
        "dataset_images_after": outcome.version.n_images,
        "version": outcome.version.name,
        "seconds": seconds,
        "images_per_s": len(items) / seconds,
        "validation_rows_per_s": len(items) / gate_seconds,
        "phases_seconds": phases,
        "load_average_1min": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--add", type=int, default=None, help="Images per added batch (100).")
    parser.add_argument("--add-repeats", type=int, default=None, help="Added batches per size (3).")
    parser.add_argument("--root", type=Path, default=None, help="Data root to create.")
    parser.add_argument(
        "--dvc-commands",
        action="store_true",
        help="Record every version with `dvc add` and `dvc push`, as before the in-process update.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    sizes = args.sizes or ([100, 300] if args.quick else [1000, 3000, 10000])
    add = args.add or (20 if args.quick else 100)
    add_repeats = args.add_repeats or (1 if args.quick else 3)
    if sizes != sorted(sizes):
        raise SystemExit(f"--sizes must increase, got {sizes}")
    release = datasets_dir(args.datasets) / "covid-ct"
    machine = machine_info()

    reserved = add * add_repeats * len(sizes)
    generation_load = load_average()
    pool, written_seconds = synthetic_items(release, sizes[-1] + reserved)
    bulk, extra = pool[: sizes[-1]], pool[sizes[-1] :]

    root = args.root or Path(f"/tmp/ladnn-bench/import-{time.strftime('%H%M%S')}")
    root.mkdir(parents=True, exist_ok=False)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    workspace = Workspace(root / "workspace").ensure()
    if args.dvc_commands:
        versioning.stage_data = lambda root: None
    timer = instrument()

    stages = []
    present = 0
    for size in sizes:
        stage = {"size": size}
        stage["bulk"] = import_timed(root, workspace, f"bulk-to-{size}", bulk[present:size], timer)
        present = size
        logging.warning("bulk import to %d: %s", size, stage["bulk"])
        # The importer caches the reference metrics of the images it commits. This call reads the
        # cache and measures any dataset image missing from it, so no added batch pays for them.
        warm_started = time.perf_counter()
        importer.load_reference_metrics(
            DatasetStore(root), workspace.validation_dir / importer.REFERENCE_CACHE_NAME
        )
        stage["bulk"]["reference_metrics_warm_seconds"] = time.perf_counter() - warm_started
        timer.take()
        adds = []
        for repeat in range(add_repeats):
            batch, extra = extra[:add], extra[add:]
            adds.append(import_timed(root, workspace, f"add-{size}-{repeat + 1}", batch, timer))
            logging.warning("add %d at %d: %.1f s", add, size, adds[-1]["seconds"])
        stage["add"] = adds
        stage["add_median_seconds"] = median([item["seconds"] for item in adds])
        stages.append(stage)

    result = {
        "benchmark": "import_scaling",
        "machine": machine,
        "root": str(root),
        "synthetic": {
            "folder": str(SYNTHETIC_DIR),
            "images": len(pool),
            "seconds_writing_new_files": written_seconds,
            "load_average_1min": generation_load,
        },
        "add_batch_images": add,
        "dvc": "commands" if args.dvc_commands else "in process after the first version",
        "stages": stages,
        "load_average_1min_end": load_average(),
    }
    write_result(result, args.output)


if __name__ == "__main__":
    main()
