"""Peak resident memory of training and of the dashboard process with a model loaded.

Each measurement runs in a new process and reads the process's own peak resident set size
(`VmHWM` in /proc/self/status):

- `train`: `train_model` for one epoch on release images decoded once, per backbone;
- `dashboard`: Streamlit's AppTest runs the dashboard script in the process, as the server
  process does for a session: sign in, open Overview, then Diagnose, which loads the registered
  model (champion, else latest) into the process. Needs `--workspace` with a registered model.

The peak memory of a whole `ladnn train` run is measured by bench/time_to_model.py.

    .venv/bin/python bench/memory.py --workspace /tmp/ladnn-bench/time-to-model-X/workspace
    .venv/bin/python bench/memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    REPOSITORY,
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    write_result,
)

APP = REPOSITORY / "dashboards" / "app.py"
PASSWORD = "benchmark-reader-password"


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM line in /proc/self/status")


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child_train(backbone: str, images: int, size: int, release: Path) -> dict:
    import torch
    from train_throughput import decode_once, select_images, split_data

    from ladnn.config import load_config
    from ladnn.training.trainer import train_model

    chosen = select_images(release, images)
    pixels, _ = decode_once(chosen)
    if size != pixels.shape[-1]:
        pixels = torch.nn.functional.interpolate(pixels.float(), size=size).to(torch.uint8)
    train = split_data(chosen, pixels)
    val = split_data(chosen[:32], pixels[:32])
    cfg = load_config(
        profile="short",
        overrides=[
            f"model.backbone={backbone}",
            "model.pretrained=false",
            "train.epochs=1",
            f"train.image_size={size}",
        ],
    )
    before = current_rss_mib()
    train_model(cfg, train, val, progress=False)
    return {"rss_before_training_mib": before, "peak_rss_mib": peak_rss_mib()}


def child_dashboard(workspace: Path, data_root: Path) -> dict:
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(REPOSITORY))
    from dashboards.auth import add_user

    users = Path(tempfile.mkdtemp(prefix="ladnn-bench-users-")) / "users.yaml"
    add_user(users, "bench", "analyst", PASSWORD)
    os.environ["LADNN_WORKSPACE"] = str(workspace)
    os.environ["LADNN_OVERRIDES"] = json.dumps([f"data.root={data_root}"])
    os.environ["LADNN_DASHBOARD_USERS"] = str(users)

    app = AppTest.from_file(str(APP), default_timeout=600)
    app.run()
    app.text_input(key="sign_in_name").input("bench")
    app.text_input(key="sign_in_password").input(PASSWORD)
    app.button[0].click().run()
    signed_in = current_rss_mib()
    app.switch_page("pages/diagnose.py")
    app.run()
    if app.exception:
        raise RuntimeError([item.message for item in app.exception])
    texts = " ".join(str(item.value) for item in app.markdown)
    if "Model:" not in texts:
        raise RuntimeError(f"the Diagnose page loaded no model: {texts[:500]}")
    return {
        "rss_signed_in_mib": signed_in,
        "rss_model_loaded_mib": current_rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }


def run_child(arguments: list[str]) -> dict:
    load = load_average()
    environment = {k: v for k, v in os.environ.items() if k != "LADNN_SERVERS"}
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    if result.returncode != 0:
        raise SystemExit(f"child {arguments} failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "load_average_1min": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--workspace", type=Path, help="Workspace with a registered model.")
    parser.add_argument("--data-root", type=Path, help="Its data root (default its parent).")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--child", choices=["train", "dashboard"], help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=None, help="Training images (192).")
    parser.add_argument("--size", type=int, default=None, help="Training image size (224).")
    args = parser.parse_args()
    release = datasets_dir(args.datasets) / "covid-ct"
    images = args.images or (64 if args.quick else 192)
    size = args.size or (64 if args.quick else 224)

    if args.child == "train":
        print(json.dumps(child_train(args.backbone, images, size, release)))
        return
    if args.child == "dashboard":
        data_root = args.data_root or args.workspace.parent
        print(json.dumps(child_dashboard(args.workspace, data_root)))
        return

    models = args.models or (
        ["efficientnet_lite0"] if args.quick else ["efficientnet_lite0", "resnet18", "densenet121"]
    )
    common = ["--images", str(images), "--size", str(size)]
    if args.datasets is not None:
        common += ["--datasets", str(args.datasets)]
    result = {
        "benchmark": "memory",
        "machine": machine_info(),
        "training": {
            "images": images,
            "image_size": size,
            "per_backbone": {
                backbone: run_child(["--child", "train", "--backbone", backbone, *common])
                for backbone in models
            },
        },
    }
    if args.workspace is not None:
        extra = ["--data-root", str(args.data_root)] if args.data_root else []
        result["dashboard"] = run_child(
            ["--child", "dashboard", "--workspace", str(args.workspace), *extra]
        )
    result["load_average_1min_end"] = load_average()
    write_result(result, args.output)


if __name__ == "__main__":
    main()
