"""A small real workspace for the dashboard tests, built once per test session.

It imports 60 release images (both classes, every split) and one undecodable file, then trains and
registers two tiny LA-DNN models. The first is promoted with an override. The second is compared
with lenient gates, so it becomes the challenger.

Tests that change the review state work on their own copy of the MLflow database (`clone`), which
also holds the audit log; the artifacts, dataset and workspace folders are shared and read-only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ladnn.config import LadnnCfg, load_config
from ladnn.cycle import register_run
from ladnn.data.importer import ImportItem
from ladnn.data.operations import import_batch
from ladnn.data.release import read_release
from ladnn.data.store import DatasetStore
from ladnn.registry.workflow import compare_versions, open_registry
from ladnn.training.run import run_training
from ladnn.workspace import Workspace

__all__ = ["DashboardWorkspace", "build_workspace", "shared_workspace", "PASSWORDS"]

TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=32",
    "eval.bootstrap=50",
]
LENIENT_GATES = ["gates.min_sensitivity=0", "gates.max_auc_drop=1", "gates.max_batch_auc_drop=1"]
# Images taken from the release per (label, split).
PER_LABEL_AND_SPLIT = {"train": 14, "val": 6, "test": 10}
BROKEN_FILE_NAME = "broken-slice.png"
PASSWORDS = {"rita": "rita-reviews-models", "ana": "ana-reads-only"}


@dataclass
class DashboardWorkspace:
    root: Path
    workspace: Path
    overrides: list[str]
    champion: str
    challenger: str
    users_file: Path
    extra_overrides: list[str] = field(default_factory=list)

    def config(self) -> LadnnCfg:
        return load_config(None, [*self.overrides, *self.extra_overrides])

    def environment(self) -> dict[str, str]:
        """Environment variables that point the dashboard at this workspace."""
        return {
            "LADNN_WORKSPACE": str(self.workspace),
            "LADNN_OVERRIDES": json.dumps([*self.overrides, *self.extra_overrides]),
            "LADNN_DASHBOARD_USERS": str(self.users_file),
        }

    def clone(self, folder: Path) -> DashboardWorkspace:
        """Copy the MLflow database (registry, runs, audit log), so review decisions stay local."""
        folder.mkdir(parents=True, exist_ok=True)
        database = folder / "mlflow.db"
        shutil.copyfile(self.workspace / "mlflow" / "mlflow.db", database)
        return DashboardWorkspace(
            root=self.root,
            workspace=self.workspace,
            overrides=self.overrides,
            champion=self.champion,
            challenger=self.challenger,
            users_file=self.users_file,
            extra_overrides=[f"tracking.tracking_uri=sqlite:///{database}"],
        )


def _select_items(release_dir: Path) -> list[ImportItem]:
    items = read_release(release_dir)
    chosen = []
    for label in (1, 0):
        for split, count in PER_LABEL_AND_SPLIT.items():
            matching = [item for item in items if item.label == label and item.split == split]
            chosen.extend(matching[:count])
    chosen.append(
        ImportItem(
            file_name=BROKEN_FILE_NAME,
            read_bytes=lambda: b"this is text, not a PNG image",
            label=0,
            patient_id="broken-patient",
            source="dashboard-test",
            split="train",
        )
    )
    return chosen


def build_workspace(folder: Path, release_dir: Path) -> DashboardWorkspace:
    from dashboards.auth import add_user

    root = folder / "root"
    root.mkdir(parents=True, exist_ok=True)
    space = Workspace.resolve(root / "workspace").ensure()
    overrides = [*TINY, f"data.root={root}", f"data.release={release_dir}"]
    cfg = load_config(None, overrides)
    store = DatasetStore(root)
    result = import_batch(root, space, "dashboard-test", _select_items(release_dir), progress=False)

    versions = []
    for seed in (0, 1):
        seeded = load_config(None, [*overrides, f"train.seed={seed}"])
        run = run_training(seeded, space, store, result.version, progress=False)
        versions.append(register_run(seeded, space, run))
    champion, challenger = versions

    registry = open_registry(cfg, space)
    registry.promote(champion, reviewer="setup", reason="first model of the test", override=True)
    lenient = load_config(None, [*overrides, *LENIENT_GATES])
    report, _ = compare_versions(lenient, space, store, challenger)
    if not report.gates_passed or registry.challenger() != challenger:
        raise RuntimeError(f"version {challenger} did not become the challenger: {report.gates}")

    users_file = space.root / "dashboard-users.yaml"
    add_user(users_file, "rita", "reviewer", PASSWORDS["rita"])
    add_user(users_file, "ana", "analyst", PASSWORDS["ana"])
    return DashboardWorkspace(
        root=root,
        workspace=space.root,
        overrides=overrides,
        champion=champion,
        challenger=challenger,
        users_file=users_file,
    )


_BUILT: dict[str, DashboardWorkspace] = {}


def shared_workspace(tmp_path_factory, release_dir: Path) -> DashboardWorkspace:
    """Build the workspace on the first call of the session and return the same one afterwards."""
    if "workspace" not in _BUILT:
        folder = tmp_path_factory.mktemp("dashboard-workspace")
        _BUILT["workspace"] = build_workspace(folder, release_dir)
    return _BUILT["workspace"]
