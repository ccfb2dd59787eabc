"""The workspace: one folder for all local state (tracking store, DVC remote and cache, Prefect home,
quarantine, caches, checkpoints)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ladnn.config import LadnnCfg

__all__ = ["Workspace", "WORKSPACE_ENV", "DATASETS_ENV", "default_datasets_dir", "release_dir"]

WORKSPACE_ENV = "LADNN_WORKSPACE"
DATASETS_ENV = "LADNN_DATASETS"


def default_datasets_dir() -> Path:
    """Folder of the public datasets: `$LADNN_DATASETS`, else `../shared/datasets` beside the current
    folder, else beside the source checkout this package runs from."""
    configured = os.environ.get(DATASETS_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    beside_cwd = (Path.cwd().parent / "shared" / "datasets").resolve()
    beside_checkout = (Path(__file__).resolve().parents[3] / "shared" / "datasets").resolve()
    for candidate in (beside_cwd, beside_checkout):
        if candidate.is_dir():
            return candidate
    return beside_cwd


def release_dir(cfg: LadnnCfg) -> Path:
    """Folder of the COVID-CT release: `data.release`, else `covid-ct` in the datasets folder."""
    return (
        Path(cfg.data.release).resolve()
        if cfg.data.release
        else default_datasets_dir() / "covid-ct"
    )


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> Workspace:
        """Use `path`, else `$LADNN_WORKSPACE`, else `./workspace`."""
        chosen = path or os.environ.get(WORKSPACE_ENV) or "workspace"
        return cls(Path(chosen).expanduser().resolve())

    def export_environment(self, *, verbose: bool = False) -> None:
        """Point the tools at this workspace and quieten them, unless the environment sets them.

        Prefect keeps its database here. DVC and Prefect's server send no usage analytics, and
        MLflow shows no download bars and logs warnings only (debug messages with `verbose`).
        """
        os.environ[WORKSPACE_ENV] = str(self.root)
        os.environ.setdefault("PREFECT_HOME", str(self.prefect_home))
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Prefect gives its temporary local server 20 s to start, which a busy 2-core machine
        # exceeds.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")

    def ensure(self) -> Workspace:
        for folder in (
            self.mlflow_dir,
            self.artifacts_dir,
            self.dvc_remote,
            self.dvc_cache,
            self.prefect_home,
            self.quarantine_dir,
            self.validation_dir,
            self.cache_dir,
            self.checkpoints_dir,
            self.datasets_dir,
            self.runs_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def dvc_cache(self) -> Path:
        return self.root / "dvc-cache"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def validation_dir(self) -> Path:
        """Validation results, each with its Data Docs, and the cached image metrics of the dataset."""
        return self.root / "validation"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def datasets_dir(self) -> Path:
        """Dataset version records."""
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        """Local copies of each run's resolved configuration and summary."""
        return self.root / "runs"
