"""Cost of pointing a data root's DVC cache and remote at the workspace, once per import.

Times `ladnn.data.versioning._configure_dvc`, which edits `.dvc/config.local` through DVC's
config API in the importing process, against the three `dvc` processes that set the same values
from the command line (`dvc config` twice, `dvc remote add`). The two alternate in every repeat
on a fresh `dvc init --no-scm` repository under /tmp/ladnn-bench/dvc-setup. No images are read.

    .venv/bin/python bench/dvc_setup.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import add_common_arguments, load_average, machine_info, median, write_result

from ladnn.data import versioning
from ladnn.workspace import Workspace

ROOT = Path("/tmp/ladnn-bench/dvc-setup")


def configure_with_processes(root: Path, workspace: Workspace) -> None:
    versioning._dvc(["config", "--local", "core.analytics", "false"], root)
    versioning._dvc(["config", "--local", "cache.dir", str(workspace.dvc_cache)], root)
    versioning._dvc(
        [
            "remote",
            "add",
            "--local",
            "--default",
            "--force",
            "workspace",
            str(workspace.dvc_remote),
        ],
        root,
    )


def configure_in_process(root: Path, workspace: Workspace) -> None:
    versioning._configure_dvc(root, workspace, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Timed repeats of each setup (default 5, 1 with --quick).",
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)

    shutil.rmtree(ROOT, ignore_errors=True)
    root = ROOT / "root"
    root.mkdir(parents=True)
    workspace = Workspace.resolve(ROOT / "workspace").ensure()
    versioning._dvc(["init", "--no-scm", "-q"], root)

    seconds: dict[str, list[float]] = {"three dvc processes": [], "config API in process": []}
    configs: dict[str, str] = {}
    loads = []
    for _ in range(repeats):
        loads.append(load_average())
        for name, setup in (
            ("three dvc processes", configure_with_processes),
            ("config API in process", configure_in_process),
        ):
            (root / ".dvc" / "config.local").unlink(missing_ok=True)
            started = time.perf_counter()
            setup(root, workspace)
            seconds[name].append(time.perf_counter() - started)
            configs[name] = (root / ".dvc" / "config.local").read_text("utf-8")

    write_result(
        {
            "benchmark": "dvc_setup",
            "machine": machine_info(),
            "repeats": repeats,
            "seconds": seconds,
            "median_seconds": {name: median(values) for name, values in seconds.items()},
            "same_config_written": len(set(configs.values())) == 1,
            "load_average_1min": loads,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
