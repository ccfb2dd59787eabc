"""The Prefect flows on real images with Prefect's test harness: ingest, retrain, review, inbox."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.testing.utilities import prefect_test_harness

from ladnn.config import load_config
from ladnn.data.versioning import list_versions
from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace
from pipelines.common import DATASET_VERSION_CREATED
from pipelines.inbox import inbox_flow
from pipelines.ingest import ingest_flow
from pipelines.retrain import retrain_flow

pytestmark = pytest.mark.slow

TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=64",
    "eval.bootstrap=50",
    "gates.min_sensitivity=0",
    "gates.max_auc_drop=1",
    "gates.max_batch_auc_drop=1",
]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def setup(harness, tmp_path_factory, release_dir, new_data_dir):
    root = tmp_path_factory.mktemp("flows-root")
    workspace = Workspace.resolve(root / "workspace").ensure()
    overrides = [*TINY, f"data.root={root}", f"data.release={release_dir}"]
    arguments = {"overrides": overrides, "workspace": str(workspace.root)}
    first = ingest_flow(source=str(release_dir), **arguments)
    second = ingest_flow(source=str(new_data_dir / "5.16"), **arguments)
    repeated = ingest_flow(source=str(new_data_dir / "5.16"), **arguments)
    retrained = retrain_flow(
        dataset_version="v2",
        variants=["efficientnet_lite0:ladnn", "resnet18:baseline"],
        **arguments,
    )
    return {
        "root": root,
        "workspace": workspace,
        "arguments": arguments,
        "overrides": overrides,
        "ingests": (first, second, repeated),
        "retrained": retrained,
    }


def _read_events(name: str) -> list:
    async def read():
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(event=EventNameFilter(name=[name])), limit=50
            )
            return page.events

    deadline = time.monotonic() + 30
    events = asyncio.run(read())
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(1)
        events = asyncio.run(read())
    return events


def test_ingest_creates_versions(setup):
    first, second, _ = setup["ingests"]
    assert (first["dataset_version"], first["created"], first["added"]) == ("v1", True, 746)
    assert (second["dataset_version"], second["created"], second["added"]) == ("v2", True, 9)


def test_ingest_repeat_adds_nothing(setup):
    _, _, repeated = setup["ingests"]
    assert repeated["dataset_version"] == "v2"
    assert not repeated["created"]
    assert [version.name for version in list_versions(setup["workspace"])] == ["v1", "v2"]


def test_ingest_emits_version_events(setup):
    events = _read_events(DATASET_VERSION_CREATED)
    versions = sorted(event.resource["ladnn.dataset.version"] for event in events)
    assert versions == ["v1", "v2"]


def test_retrain_registers_each_variant(setup):
    candidates = setup["retrained"]["candidates"]
    assert [c["variant"] for c in candidates] == ["efficientnet_lite0:ladnn", "resnet18:baseline"]
    assert len({c["model_version"] for c in candidates}) == 2


def test_review_proposes_best_by_validation(setup):
    candidates = setup["retrained"]["candidates"]
    best = max(candidates, key=lambda c: c["val_auc"])
    review = setup["retrained"]["review"]
    assert review["candidate"] == best["model_version"]
    assert review["gates_passed"]
    cfg = load_config(overrides=setup["overrides"])
    registry = open_registry(cfg, setup["workspace"])
    assert registry.challenger() == best["model_version"]
    assert registry.champion() is None


def test_retrain_rerun_uses_cache(setup):
    cfg = load_config(overrides=setup["overrides"])
    client = MlflowClient(open_registry(cfg, setup["workspace"]).client.tracking_uri)
    before = len(client.search_model_versions("name = 'ladnn'"))
    rerun = retrain_flow(
        dataset_version="v2",
        variants=["efficientnet_lite0:ladnn", "resnet18:baseline"],
        review=False,
        **setup["arguments"],
    )
    after = len(client.search_model_versions("name = 'ladnn'"))
    assert after == before
    assert rerun["candidates"] == setup["retrained"]["candidates"]


def test_inbox_ingests_and_finetunes(setup, new_data_dir):
    workspace = setup["workspace"]
    cfg = load_config(overrides=setup["overrides"])
    registry = open_registry(cfg, workspace)
    registry.promote(
        setup["retrained"]["review"]["candidate"],
        reviewer="test",
        reason="flow test",
        override=True,
    )
    inbox = workspace.root / "inbox"
    inbox.mkdir(exist_ok=True)
    shutil.copytree(new_data_dir / "6.2", inbox / "6.2")
    broken = inbox / "broken"
    broken.mkdir()
    (broken / "notes.png").write_text("not an image")

    results = inbox_flow(settle_seconds=0, **setup["arguments"])
    by_batch = {result["batch"]: result for result in results}
    assert by_batch["6.2"]["dataset_version"] == "v3"
    assert "error" in by_batch["broken"]
    assert len(list((inbox / "processed").iterdir())) == 1
    assert len(list((inbox / "failed").glob("*.error.txt"))) == 1

    tuned = retrain_flow(dataset_version="v3", mode="finetune", review=False, **setup["arguments"])
    [candidate] = tuned["candidates"]
    version = registry.client.get_model_version("ladnn", candidate["model_version"])
    run = registry.client.get_run(version.run_id)
    assert run.data.tags["continual_mode"] == "finetune"
    assert run.data.tags["finetuned_from"].startswith("ladnn/")
    assert int(run.data.tags["new_train_images"]) == 35
