"""`ladnn serve`: the champion over REST through MLflow's model server; responses name the version."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from ladnn.config import load_config
from ladnn.models.backbones import BACKBONES
from ladnn.models.ladnn import build_model
from ladnn.registry.workflow import open_registry
from ladnn.tracking.pyfunc import log_pyfunc_model
from ladnn.tracking.registry import register_candidate
from ladnn.tracking.store import configure_mlflow
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def champion_workspace(tmp_path_factory, release_dir: Path) -> tuple[Workspace, bytes]:
    root = tmp_path_factory.mktemp("serve")
    workspace = Workspace.resolve(root / "workspace").ensure()
    cfg = load_config(overrides=[f"data.root={root}"])
    image = (release_dir / "CT_COVID" / "2020.01.24.919183-p27-132.png").read_bytes()
    configure_mlflow(cfg, workspace)
    torch.manual_seed(0)
    model, _ = build_model("resnet18", pretrained=False)
    spec = {
        "backbone": "resnet18",
        "variant": "ladnn",
        "image_size": 64,
        "mean": list(BACKBONES["resnet18"].mean),
        "std": list(BACKBONES["resnet18"].std),
        "threshold": 0.5,
    }
    with mlflow.start_run(run_name="untrained"):
        info = log_pyfunc_model(model, spec, root / "model_files", pd.DataFrame({"image": [image]}))
    register_candidate(info.model_uri, "ladnn", {"backbone": "resnet18"})
    register_candidate(info.model_uri, "ladnn", {"backbone": "resnet18"})
    registry = open_registry(cfg, workspace)
    registry.promote("2", reviewer="test", reason="serve test", override=True)
    return workspace, image


def test_serve_answers_with_version(champion_workspace, tmp_path):
    workspace, image = champion_workspace
    log = tmp_path / "server.log"
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "ladnn.cli",
        "--workspace",
        str(workspace.root),
        "serve",
        "--port",
        str(port),
    ]
    with log.open("wb") as sink:
        server = subprocess.Popen(
            command, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", server, log, 300)
        body = json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(image).decode()]],
                }
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    [row] = answer["predictions"]
    assert row["model_version"] == "ladnn/2"
    assert 0.0 <= row["covid_probability"] <= 1.0
    assert set(row) >= {"GGO", "Csld", "CrPa", "AirBr", "InSepThi", "covid_positive"}


def test_serve_without_champion_fails(tmp_path):
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    result = subprocess.run(
        [sys.executable, "-m", "ladnn.cli", "--workspace", str(workspace.root), "serve"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "no version with alias 'champion'" in result.stdout
