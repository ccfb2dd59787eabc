"""The dashboard's workspace and configuration, read from environment variables.

`ladnn dashboard` sets these for the Streamlit process, so the dashboard reads the same stores as
the command that started it:

- `LADNN_WORKSPACE`: the workspace folder (default `./workspace`);
- `LADNN_CONFIG`: a YAML configuration file (optional);
- `LADNN_PROFILE`: the configuration profile (optional);
- `LADNN_OVERRIDES`: a JSON list of `section.key=value` overrides (optional);
- `LADNN_SERVERS`: a servers file naming the shared MLflow, Prefect and DVC servers (optional);
- `LADNN_DASHBOARD_USERS`: the users file (default `<workspace>/dashboard-users.yaml`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dashboards.auth import users_file_path
from ladnn.config import LadnnCfg, load_config
from ladnn.cycle import data_root
from ladnn.data.store import DatasetStore
from ladnn.servers import apply_servers
from ladnn.tracking.store import tracking_uri_for
from ladnn.workspace import Workspace

__all__ = ["CONFIG_ENV", "PROFILE_ENV", "OVERRIDES_ENV", "Settings", "load_settings"]

CONFIG_ENV = "LADNN_CONFIG"
PROFILE_ENV = "LADNN_PROFILE"
OVERRIDES_ENV = "LADNN_OVERRIDES"


@dataclass(frozen=True)
class Settings:
    workspace: Workspace
    cfg: LadnnCfg
    users_file: Path

    @property
    def store(self) -> DatasetStore:
        return DatasetStore(data_root(self.cfg))

    @property
    def tracking_uri(self) -> str:
        return tracking_uri_for(self.cfg, self.workspace)

    @property
    def model_name(self) -> str:
        return self.cfg.tracking.registered_model

    @property
    def inbox_dir(self) -> Path:
        return self.workspace.root / "inbox"


def _overrides_from_environment() -> list[str]:
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return []
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{OVERRIDES_ENV} is not valid JSON: {err}") from err
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ValueError(
            f'{OVERRIDES_ENV} must be a JSON list of strings such as ["train.epochs=5"]'
        )
    return overrides


def load_settings() -> Settings:
    """Resolve the workspace and configuration; raise ValueError naming a bad setting."""
    workspace = Workspace.resolve(None).ensure()
    config_path = os.environ.get(CONFIG_ENV) or None
    if config_path and not Path(config_path).is_file():
        raise ValueError(f"{CONFIG_ENV} names {config_path}, which is not a file")
    cfg = load_config(
        config_path, _overrides_from_environment(), os.environ.get(PROFILE_ENV) or None
    )
    # The orchestration page reads PREFECT_API_URL from the environment on every call.
    apply_servers(cfg)
    return Settings(workspace=workspace, cfg=cfg, users_file=users_file_path(workspace.root))
