"""Print Markdown tables from the JSON results of the benchmark scripts.

    .venv/bin/python bench/report.py RESULTS_FOLDER

Reads `train_throughput.json`, `time_to_model.json`, `diagnose_latency.json`,
`import_scaling.json`, `orchestration_overhead.json`, `memory.json` and `dvc_setup.json` where
present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def loads(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


def train_section(result: dict) -> str:
    peak = result["matmul_peak_float32"]["gflops_median"]
    bfloat16 = result.get("matmul_peak_bfloat16", {}).get("gflops_median")
    rows = []
    for name, model in result["models"].items():
        rows.append(
            [
                name,
                model.get("trainer_precision", "float32"),
                f"{model['trainer_median']:.1f}",
                f"{model['reference_median']:.1f}",
                f"{model['ratio_median']:.2f}",
                "yes" if model["reaches_3x"] else "no",
                f"{model['training_gflop_per_image']:.2f}",
                f"{model['trainer_fraction_of_matmul_peak']:.0%}",
                f"{model['reference_fraction_of_matmul_peak']:.0%}",
                loads(model["load_average_1min"]),
            ]
        )
    text = [
        f"Matrix-multiply peak (4096x4096): {peak:.0f} GFLOP/s in float32"
        + (f", {bfloat16:.0f} in bfloat16" if bfloat16 else "")
        + f". Decoding once: {result['decode_once']['images_per_s']:.0f} images/s.",
        "",
        table(
            [
                "backbone",
                "trainer precision",
                "trainer img/s",
                "reference img/s",
                "ratio",
                "3x",
                "GFLOP/image (train step)",
                "trainer % of its precision's peak",
                "reference % of peak",
                "load (1 min)",
            ],
            rows,
        ),
    ]
    for name, model in result["models"].items():
        variants = model.get("step_variants")
        if not variants:
            continue
        text += [
            "",
            table(
                [f"{name} step variant", "img/s (median)", "speed-up", "first step (s)"],
                [
                    [
                        variant,
                        f"{rate:.1f}",
                        f"{variants['speedup_over_float32'][variant]:.2f}",
                        loads(variants["first_step_seconds"][variant]),
                    ]
                    for variant, rate in variants["median_images_per_s"].items()
                ],
            ),
            f"Load (1 min) during the variants: {loads(variants['load_average_1min'])}.",
        ]
    return "\n".join(text)


def time_section(result: dict) -> str:
    rows = [
        [
            run["repeat"],
            run["image_cache"],
            f"{run['wall_seconds']:.0f}",
            f"{run['test_auc']:.3f} ({run['test_auc_ci'][0]:.3f}-{run['test_auc_ci'][1]:.3f})",
            f"{run['peak_rss_mib']:.0f}",
            f"{run['load_average_1min']:.1f}",
        ]
        for run in result["runs"]
    ]
    return table(
        ["run", "image cache", "wall s", "test AUC (95% CI)", "peak RSS MiB", "load (1 min)"],
        rows,
    )


def diagnose_section(result: dict) -> str:
    rows = []
    for name in ("diagnose", "gradcam"):
        item = result[name]
        rows.append(
            [
                "without Grad-CAM++" if name == "diagnose" else "with Grad-CAM++",
                item["calls"],
                f"{item['p50_ms']:.0f}",
                f"{item['p95_ms']:.0f}",
                f"{item['sequential_images_per_s']:.1f}",
                f"{item['load_average_1min']:.1f}",
            ]
        )
    for threads, item in result.get("diagnose_by_threads", {}).items():
        rows.append(
            [
                f"without Grad-CAM++, {threads} torch thread(s)",
                "2 x " + str(result["diagnose"]["calls"]),
                f"{item['p50_ms']:.0f}",
                f"{item['p95_ms']:.0f}",
                "",
                loads(item["load_average_1min"]),
            ]
        )
    text = [
        table(["call", "calls", "p50 ms", "p95 ms", "img/s one by one", "load (1 min)"], rows),
        "",
        f"Batched (decode, then `predict` in batches of {result['batched']['batch_size']}): "
        f"{result['batched']['median_images_per_s']:.1f} images/s "
        f"(load {loads(result['batched']['load_average_1min'])}).",
    ]
    if "cli_diagnose_one_image" in result:
        cli = result["cli_diagnose_one_image"]
        text.append(
            f"`ladnn diagnose IMAGE` as a new process: {cli['median_seconds']:.1f} s median "
            f"(load {loads(cli['load_average_1min'])})."
        )
    return "\n".join(text)


def import_section(result: dict) -> str:
    rows = []
    for stage in result["stages"]:
        bulk = stage["bulk"]
        phases = bulk["phases_seconds"]
        rows.append(
            [
                f"bulk to {stage['size']}",
                bulk["files"],
                f"{bulk['seconds']:.0f}",
                f"{bulk['images_per_s']:.1f}",
                f"{phases.get('decode and measure', 0):.0f}",
                f"{bulk['validation_rows_per_s']:.0f}",
                f"{phases.get('dvc add', 0) + phases.get('dvc push', 0):.0f}",
                f"{bulk['load_average_1min']:.1f}",
            ]
        )
    text = [
        table(
            [
                "import",
                "files",
                "s",
                "img/s",
                "decode s",
                "gate rows/s",
                "DVC add+push s",
                "load (1 min)",
            ],
            rows,
        ),
        "",
    ]
    phase_names = sorted(
        {
            name
            for stage in result["stages"]
            for add in stage["add"]
            for name in add["phases_seconds"]
        }
    )
    add_rows = []
    for stage in result["stages"]:
        for add in stage["add"]:
            add_rows.append(
                [
                    add["dataset_images_after"] - add["added"],
                    f"{add['seconds']:.1f}",
                    *[f"{add['phases_seconds'].get(name, 0):.1f}" for name in phase_names],
                    f"{add['load_average_1min']:.1f}",
                ]
            )
    text.append(
        table(
            ["dataset before", "add s", *[f"{name} s" for name in phase_names], "load (1 min)"],
            add_rows,
        )
    )
    return "\n".join(text)


def orchestration_section(result: dict) -> str:
    rows = [
        [
            mode,
            f"{run['steps_seconds']:.0f}",
            f"{run['train_seconds']:.0f}",
            f"{run['steps_seconds'] - run['train_seconds']:.0f}",
            f"{run['process_seconds']:.0f}",
            f"{run['load_average_1min']:.1f}",
        ]
        for mode, runs in result["runs"].items()
        for run in runs
    ]
    return "\n".join(
        [
            table(
                [
                    "mode",
                    "steps s",
                    "training s",
                    "outside training s",
                    "process s",
                    "load (1 min)",
                ],
                rows,
            ),
            "",
            f"Prefect: {result['prefect_seconds']:.1f} s, MLflow and logged artifacts: "
            f"{result['mlflow_and_artifacts_seconds']:.1f} s, together "
            f"{result['prefect_and_mlflow_fraction_of_training']:.1%} of the median training "
            f"time {result['median_train_seconds']:.0f} s.",
        ]
    )


def memory_section(result: dict) -> str:
    rows = [
        [
            f"training, {name}",
            f"{item['peak_rss_mib']:.0f}",
            f"{item['load_average_1min']:.1f}",
        ]
        for name, item in result["training"]["per_backbone"].items()
    ]
    if "dashboard" in result:
        dashboard = result["dashboard"]
        rows.append(
            [
                "dashboard, model loaded",
                f"{dashboard['peak_rss_mib']:.0f}",
                f"{dashboard['load_average_1min']:.1f}",
            ]
        )
    return table(["process", "peak RSS MiB", "load (1 min)"], rows)


def dvc_setup_section(result: dict) -> str:
    rows = [
        [
            name,
            len(values),
            f"{1000 * result['median_seconds'][name]:.1f}",
            f"{1000 * max(values):.1f}",
        ]
        for name, values in result["seconds"].items()
    ]
    same = "yes" if result["same_config_written"] else "no"
    return (
        table(["setup", "repeats", "median ms", "max ms"], rows)
        + f"\n\nSame `.dvc/config.local` written: {same}. "
        + f"Load (1 min): {loads(result['load_average_1min'])}."
    )


SECTIONS = {
    "train_throughput": train_section,
    "time_to_model": time_section,
    "diagnose_latency": diagnose_section,
    "import_scaling": import_section,
    "orchestration_overhead": orchestration_section,
    "memory": memory_section,
    "dvc_setup": dvc_setup_section,
}


def main() -> None:
    folder = Path(sys.argv[1])
    for name, render in SECTIONS.items():
        result = load(folder, name)
        if result is None:
            continue
        machine = result["machine"]
        print(f"## {name}\n")
        print(f"Command: `{machine['command']}`, started {machine['measured_at']}.\n")
        print(render(result))
        print()


if __name__ == "__main__":
    main()
