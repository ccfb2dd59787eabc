"""The Prefect flows on real images with Prefect's test harness: ingest, retrain, review, inbox."""

from __future__ import annotations

import asyncio
import contextvars
import shutil
import threading
import time
from uuid import UUID

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageOps
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from ladnn.cli import app
from ladnn.config import load_config
from ladnn.data.versioning import list_versions
from ladnn.registry.waiting import waiting_run
from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace
from pipelines.common import DATASET_VERSION_CREATED, DRIFT_DETECTED
from pipelines.inbox import inbox_flow
from pipelines.ingest import ingest_flow
from pipelines.retrain import retrain_flow
from pipelines.review import review_flow

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


def _read_events(name: str, at_least: int = 2) -> list:
    """Read the events named `name`, waiting up to 30 s for at least `at_least` of them."""

    async def read():
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(event=EventNameFilter(name=[name])), limit=50
            )
            return page.events

    deadline = time.monotonic() + 30
    events = asyncio.run(read())
    while len(events) < at_least and time.monotonic() < deadline:
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


def test_library_logs_reach_flow_run(setup, new_data_dir):
    state = ingest_flow(source=str(new_data_dir / "5.16"), **setup["arguments"], return_state=True)
    flow_run_id = state.state_details.flow_run_id

    async def read() -> list:
        async with get_client() as client:
            return await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
            )

    deadline = time.monotonic() + 30
    while True:
        names = {log.name for log in asyncio.run(read())}
        if "ladnn.data.importer" in names or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "ladnn.data.importer" in names


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


def _latest_versions(registry) -> list[str]:
    versions = registry.client.search_model_versions(f"name = '{registry.name}'")
    return sorted((str(v.version) for v in versions), key=int)


def _start_waiting_review(setup, version: str) -> tuple[threading.Thread, dict]:
    """Run the review flow on `version` in a thread until it pauses for a decision."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = review_flow(
                candidates=[version],
                wait_for_decision=True,
                decision_timeout_seconds=300,
                poll_interval_seconds=1,
                **setup["arguments"],
            )
        except BaseException as err:  # noqa: BLE001 - the test reports whatever ended the flow
            outcome["error"] = err

    # The test harness's settings live in context variables, which a new thread does not inherit.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    cfg = load_config(overrides=setup["overrides"])
    registry = open_registry(cfg, setup["workspace"])
    deadline = time.monotonic() + 180
    while waiting_run(registry, version) is None:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, "the review flow never waited for a decision"
        time.sleep(0.5)
    return thread, outcome


def test_review_wait_cli_decision(setup):
    cfg = load_config(overrides=setup["overrides"])
    registry = open_registry(cfg, setup["workspace"])
    version = _latest_versions(registry)[-1]
    assert registry.champion() != version
    thread, outcome = _start_waiting_review(setup, version)
    assert thread.is_alive()

    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(setup["workspace"].root),
            *[arg for override in setup["overrides"] for arg in ("--set", override)],
            "reject",
            version,
            "--reviewer",
            "rita",
            "--reason",
            "worse on the new batch",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "resumed the review flow run" in result.output
    thread.join(120)
    assert not thread.is_alive()
    decision = outcome["result"]["decision"]
    assert (decision["action"], decision["to_version"], decision["reviewer"]) == (
        "reject",
        version,
        "rita",
    )
    # The flow reported the recorded decision instead of recording a second one.
    events = [e for e in registry.audit.events(registry.name) if e.to_version == version]
    assert [e.action for e in events] == ["reject"]
    assert waiting_run(registry, version) is None


def test_review_wait_ui_input(setup):
    cfg = load_config(overrides=setup["overrides"])
    registry = open_registry(cfg, setup["workspace"])
    champion = registry.champion()
    version = next(
        c["model_version"]
        for c in setup["retrained"]["candidates"]
        if c["model_version"] != champion
    )
    thread, outcome = _start_waiting_review(setup, version)
    flow_run_id, api_url = waiting_run(registry, version)
    assert api_url
    # What the Prefect UI's resume form sends: the decision without an audit record.
    decision = {"approve": True, "reviewer": "omar", "reason": "better", "override": True}
    deadline = time.monotonic() + 60
    while True:
        try:
            resume_flow_run(UUID(flow_run_id), run_input=decision)
            break
        except NotPausedError:
            assert time.monotonic() < deadline, "the review flow never paused"
            time.sleep(1)
    thread.join(120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["result"]["decision"]["action"] == "promote"
    assert registry.champion() == version
    last = registry.audit.events(registry.name)[-1]
    assert (last.action, last.to_version, last.reviewer) == ("promote", version, "omar")


def test_ingest_drift_inverted_batch(setup, release_dir, tmp_path):
    # A batch exported with inverted grey levels, as when an export ignores MONOCHROME1. The
    # anatomy is the same but the intensities are unlike the training data.
    batch = tmp_path / "inverted-export"
    batch.mkdir()
    rows = ["file_name,label,patient_id"]
    for index, path in enumerate(sorted((release_dir / "CT_NonCOVID").glob("*.png"))[:24]):
        ImageOps.invert(Image.open(path).convert("L")).save(batch / f"inverted-{index}.png")
        rows.append(f"inverted-{index}.png,0,inverted-patient-{index}")
    (batch / "metadata.csv").write_text("\n".join(rows) + "\n")

    result = ingest_flow(source=str(batch), **setup["arguments"])
    assert result["created"], result
    drift = result["drift"]
    assert drift["detected"]
    assert "intensity_mean" in drift["drifted"]
    # The champion exists by now, so its embeddings and scores were compared too.
    assert "embedding_cosine_distance" in drift["statistics"]
    # Earlier batches may have drifted too, so wait until this version's event is stored.
    deadline = time.monotonic() + 60
    while True:
        versions = {e.resource["ladnn.dataset.version"] for e in _read_events(DRIFT_DETECTED, 1)}
        if result["dataset_version"] in versions or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result["dataset_version"] in versions
