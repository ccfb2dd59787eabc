"""The review commands of the CLI, run in order on one workspace: promote with override, compare,
promote, audit, models, rollback, and errors for unknown versions.

The workspace contains 120 release images and two untrained LA-DNNs registered as versions 1 and 2:
the commands need model versions to review, not good models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ladnn.cli import app, console
from ladnn.config import load_config
from ladnn.data.importer import import_items
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.models.backbones import BACKBONES
from ladnn.models.ladnn import build_model
from ladnn.registry.workflow import open_registry
from ladnn.tracking.pyfunc import log_pyfunc_model
from ladnn.tracking.registry import register_candidate
from ladnn.tracking.store import configure_mlflow
from ladnn.workspace import WORKSPACE_ENV, Workspace

# Images taken from the release per (split, label): both classes in every split.
SUBSET = {
    ("train", 1): 30,
    ("train", 0): 30,
    ("val", 1): 10,
    ("val", 0): 10,
    ("test", 1): 20,
    ("test", 0): 20,
}
# Gates that untrained models pass, and a short bootstrap for the comparison's intervals.
SETTINGS = [
    "gates.min_sensitivity=0",
    "gates.max_auc_drop=1",
    "gates.max_batch_auc_drop=1",
    "eval.bootstrap=50",
]
# Variables the CLI sets in os.environ. Passing them to `invoke` makes the runner restore them
# afterwards, so the commands do not leak this workspace into later tests.
CLI_ENVIRONMENT = (
    WORKSPACE_ENV,
    "PREFECT_HOME",
    "DVC_NO_ANALYTICS",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "MLFLOW_LOGGING_LEVEL",
)


@dataclass
class CliWorkspace:
    root: Path
    workspace: Workspace

    @property
    def options(self) -> list[str]:
        options = ["--workspace", str(self.workspace.root), "--set", f"data.root={self.root}"]
        for setting in SETTINGS:
            options += ["--set", setting]
        return options

    def invoke(self, *args: str):
        environment = dict.fromkeys(CLI_ENVIRONMENT)
        return CliRunner().invoke(app, [*self.options, *args], env=environment)

    def registry(self):
        cfg = load_config(overrides=[f"data.root={self.root}"])
        return open_registry(cfg, self.workspace)


def log_untrained_version(workspace: Workspace, image: bytes, seed: int) -> str:
    """Log an untrained LA-DNN (64 px) in a run of its own, register it and return the version."""
    torch.manual_seed(seed)
    model, _ = build_model("resnet18", pretrained=False)
    spec = {
        "backbone": "resnet18",
        "variant": "ladnn",
        "image_size": 64,
        "mean": list(BACKBONES["resnet18"].mean),
        "std": list(BACKBONES["resnet18"].std),
        "threshold": 0.5,
        "tta": False,
    }
    with mlflow.start_run(run_name=f"untrained-{seed}"):
        info = log_pyfunc_model(
            model, spec, workspace.root / f"model_files_{seed}", pd.DataFrame({"image": [image]})
        )
    tags = {"backbone": "resnet18", "variant": "ladnn"}
    return str(register_candidate(info.model_uri, "ladnn", tags).version)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, release_dir: Path) -> Iterator[CliWorkspace]:
    base = tmp_path_factory.mktemp("cli-review")
    root = base / "root"
    workspace = Workspace.resolve(base / "workspace").ensure()

    remaining = dict(SUBSET)
    items = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if remaining.get(key, 0) > 0:
            remaining[key] -= 1
            items.append(item)
    import_items(items, DatasetStore(root), RELEASE_BATCH_ID, progress=False)

    configure_mlflow(load_config(overrides=[f"data.root={root}"]), workspace)
    image = sorted((release_dir / "CT_COVID").glob("*.png"))[0].read_bytes()
    versions = [log_untrained_version(workspace, image, seed) for seed in (1, 2)]
    assert versions == ["1", "2"]

    # Print tables 200 columns wide, so that no cell this module checks is cut. One torch thread
    # scores faster than two on a shared two-core machine under load.
    width, threads = console.width, torch.get_num_threads()
    console.width = 200
    torch.set_num_threads(1)
    try:
        yield CliWorkspace(root, workspace)
    finally:
        console.width = width
        torch.set_num_threads(threads)


def test_promote_needs_override(cli):
    result = cli.invoke("promote", "1", "--reviewer", "carol", "--reason", "first")
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "--override" in result.output
    assert cli.registry().champion() is None


def test_promote_with_override(cli):
    result = cli.invoke("promote", "1", "--reviewer", "carol", "--reason", "first", "--override")
    assert result.exit_code == 0, result.output
    assert "#1 promote: - -> 1 by carol" in result.output
    assert cli.registry().champion() == "1"


def test_compare_prints_markdown(cli):
    result = cli.invoke("compare", "2", "1")
    assert result.exit_code == 0, result.output
    assert "# ladnn: candidate v2 against champion v1" in result.output
    assert "DeLong" in result.output
    assert "Per batch" in result.output
    assert "gates passed; version 2 is the challenger" in result.output
    assert cli.registry().challenger() == "2"


def test_promote_prints_event(cli):
    result = cli.invoke("promote", "2", "--reviewer", "alice", "--reason", "ok")
    assert result.exit_code == 0, result.output
    assert "#2 promote: 1 -> 2 by alice" in result.output
    assert cli.registry().champion() == "2"


def test_audit_lists_events(cli):
    result = cli.invoke("audit")
    assert result.exit_code == 0, result.output
    assert "alice" in result.output
    assert "carol" in result.output
    assert "promote (override)" in result.output
    assert "comparison" in result.output
    # Piped output keeps whole cells instead of cutting them at 80 columns.
    assert re.search(r"runs:/[0-9a-f]{32}/comparison/v\d+_vs_(v\d+|none)\.json", result.output)


def test_models_shows_aliases(cli):
    result = cli.invoke("models")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "resnet18" in line]
    assert len(rows) == 2
    assert "approved" in rows[0]
    assert "champion" in rows[1]
    assert "passed" in rows[1]


def test_rollback_prints_event(cli):
    result = cli.invoke("rollback", "--reviewer", "bob", "--reason", "r")
    assert result.exit_code == 0, result.output
    assert "#3 rollback: 2 -> 1 by bob" in result.output
    assert cli.registry().champion() == "1"


@pytest.mark.parametrize(
    "command",
    [
        ["promote", "99", "--reviewer", "alice", "--reason", "typo"],
        ["reject", "99", "--reviewer", "alice", "--reason", "typo"],
        ["compare", "99"],
        ["compare", "2", "99"],
    ],
    ids=["promote", "reject", "compare", "compare-champion"],
)
def test_unknown_version_fails_cleanly(cli, command):
    result = cli.invoke(*command)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error:" in result.output
    assert "99" in result.output
    assert "Traceback" not in result.output
