"""Diagnosis latency for one image (p50, p95) and throughput, with and without Grad-CAM++.

Without Grad-CAM++ each call is `ladnn.evaluation.registered.diagnose_image`, what
`ladnn diagnose` runs per file: read, decode and normalise the file, resize, one forward pass.
With Grad-CAM++ each call is `ladnn.evaluation.explain.explain_image`, what `ladnn explain` and
the dashboard run: the same decoding plus one forward and one backward pass over a batch of one
copy per output. Batch throughput is measured twice: the sequential loop of `ladnn diagnose`, and
`predict` over decoded images in batches of 32. With `--workspace`, the model is the registered
one (champion, else latest) and the end-to-end wall time of `ladnn diagnose IMAGE` is measured
too; without it an untrained EfficientNet-Lite0 LA-DNN of the same shape is used. The
single-image latency is also measured with one torch thread against the default count, twice
each, alternately.

    .venv/bin/python bench/diagnose_latency.py --workspace /tmp/ladnn-bench/time-to-model-X/workspace
    .venv/bin/python bench/diagnose_latency.py --quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import warnings
from pathlib import Path

import torch
from common import (
    REPOSITORY,
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    median,
    percentile,
    write_result,
)

from ladnn.config import load_config
from ladnn.data.images import normalise_image
from ladnn.evaluation.explain import explain_image
from ladnn.evaluation.registered import LoadedModel, diagnose_image, load_model
from ladnn.models.ladnn import build_model
from ladnn.training.images import load_image_tensor
from ladnn.training.trainer import predict
from ladnn.workspace import Workspace

TARGET_P50_MS = 50.0
BATCH_SIZE = 32


def release_images(release: Path, count: int) -> list[Path]:
    """Take `count` release files, alternating COVID and negative, PNG and JPEG alike."""
    covid = sorted((release / "CT_COVID").iterdir())
    negative = sorted((release / "CT_NonCOVID").iterdir())
    mixed = [path for pair in zip(covid, negative, strict=False) for path in pair]
    return mixed[:count]


def untrained_model(backbone: str) -> LoadedModel:
    model, loaded = build_model(backbone, pretrained=False)
    spec = {
        "backbone": backbone,
        "variant": "ladnn",
        "image_size": 224,
        "mean": list(loaded.spec.mean),
        "std": list(loaded.spec.std),
        "threshold": 0.5,
        "tta": False,
        "dataset_version": "none",
    }
    return LoadedModel(model.eval(), spec, f"untrained {backbone}")


def time_calls(function, paths: list[Path], calls: int) -> dict[str, float]:
    """Call `function(path)` `calls` times over `paths` after 3 untimed calls; summarise ms."""
    for path in paths[:3]:
        function(path)
    latencies = []
    load = load_average()
    started = time.perf_counter()
    for index in range(calls):
        call_started = time.perf_counter()
        function(paths[index % len(paths)])
        latencies.append((time.perf_counter() - call_started) * 1000)
    total = time.perf_counter() - started
    return {
        "calls": calls,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_ms": sum(latencies) / len(latencies),
        "sequential_images_per_s": calls / total,
        "load_average_1min": load,
    }


def diagnose_by_threads(loaded: LoadedModel, paths: list[Path], calls: int) -> dict:
    """Time `diagnose_image` with one torch thread and with the default count, alternately."""
    default = torch.get_num_threads()
    results: dict[str, list[dict]] = {"1": [], str(default): []}
    try:
        for _ in range(2):
            for threads in (default, 1):
                torch.set_num_threads(threads)
                results[str(threads)].append(
                    time_calls(lambda path: diagnose_image(loaded, path), paths, calls)
                )
    finally:
        torch.set_num_threads(default)
    return {
        threads: {
            "p50_ms": median([run["p50_ms"] for run in runs]),
            "p95_ms": median([run["p95_ms"] for run in runs]),
            "load_average_1min": [run["load_average_1min"] for run in runs],
        }
        for threads, runs in results.items()
    }


def batched_throughput(loaded: LoadedModel, paths: list[Path], repeats: int) -> dict:
    """Decode every file, then score in batches of 32 with `predict`; images per second."""
    size = int(loaded.spec["image_size"])
    rates, loads = [], []
    for _ in range(repeats):
        loads.append(load_average())
        started = time.perf_counter()
        pixels = torch.stack(
            [
                load_image_tensor(normalise_image(path.read_bytes(), path.name).image, size)
                for path in paths
            ]
        )
        predict(
            loaded.model,
            pixels,
            tuple(loaded.spec["mean"]),
            tuple(loaded.spec["std"]),
            batch_size=BATCH_SIZE,
        )
        rates.append(len(paths) / (time.perf_counter() - started))
    return {
        "images": len(paths),
        "batch_size": BATCH_SIZE,
        "images_per_s": rates,
        "median_images_per_s": median(rates),
        "load_average_1min": loads,
    }


def cli_wall_times(workspace: Path, data_root: Path, image: Path, repeats: int) -> dict:
    """Time `ladnn diagnose IMAGE` as a new process: interpreter start, imports, model load."""
    command = [
        str(REPOSITORY / ".venv" / "bin" / "ladnn"),
        "--workspace",
        str(workspace),
        "--set",
        f"data.root={data_root}",
        "diagnose",
        str(image),
    ]
    seconds, loads = [], []
    environment = {k: v for k, v in os.environ.items() if k != "LADNN_SERVERS"}
    for _ in range(repeats):
        loads.append(load_average())
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=environment)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "median_seconds": median(seconds), "load_average_1min": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--workspace", type=Path, help="Workspace with a registered model.")
    parser.add_argument(
        "--data-root", type=Path, help="Data root of that workspace (default its parent)."
    )
    parser.add_argument("--calls", type=int, default=None, help="Timed calls (default 100).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)

    release = datasets_dir(args.datasets) / "covid-ct"
    calls = args.calls or (10 if args.quick else 100)
    gradcam_calls = max(3, calls // 4)
    paths = release_images(release, 64 if args.quick else 256)
    machine = machine_info()

    if args.workspace is not None:
        data_root = args.data_root or args.workspace.parent
        cfg = load_config(overrides=[f"data.root={data_root}"])
        loaded = load_model(cfg, Workspace.resolve(args.workspace))
    else:
        loaded = untrained_model("efficientnet_lite0")
    spec = loaded.backbone_spec
    size = int(loaded.spec["image_size"])

    result = {
        "benchmark": "diagnose_latency",
        "machine": machine,
        "model": loaded.description,
        "backbone": loaded.spec["backbone"],
        "image_size": size,
        "diagnose": time_calls(lambda path: diagnose_image(loaded, path), paths, calls),
        "diagnose_by_threads": diagnose_by_threads(loaded, paths, calls),
        "gradcam": time_calls(
            lambda path: explain_image(loaded.model, spec, path, image_size=size),
            paths,
            gradcam_calls,
        ),
        "batched": batched_throughput(loaded, paths, 1 if args.quick else 3),
        "target_p50_ms": TARGET_P50_MS,
    }
    result["target_p50_met"] = result["diagnose"]["p50_ms"] < TARGET_P50_MS
    if args.workspace is not None and not args.quick:
        result["cli_diagnose_one_image"] = cli_wall_times(
            args.workspace, data_root, paths[0], repeats=3
        )
    result["load_average_1min_end"] = load_average()
    write_result(result, args.output)


if __name__ == "__main__":
    main()
