"""Two reviewers promote different versions at the same moment, from two processes.

Exactly one promotion may win: the audit log's unique `(model_name, seq)` turns the second insert
into a `ConcurrentReviewError`. The race runs on three stores: SQLite, PostgreSQL, and an MLflow
tracking server (`mlflow server` on a fresh PostgreSQL database, basic authentication on, artifacts
proxied to a local folder) with the audit log in a second PostgreSQL database. Each round holds a lock on the audit table while both processes
start their promotion, so that both have read the log before either writes. Without that lock the
scheduler may run one promotion to the end before the other reads the log, and the second then
succeeds on top of the first, which is correct but is no race.

The registered versions are untrained LA-DNNs: the race needs model versions, not good models.
Torch, timm and the comparison code are imported inside the functions that need them. Each
spawned worker imports this module, and without them it started in 3 s instead of 13 s on a busy
two-core machine.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import BrokenBarrierError

import psycopg2
import pytest
from live_servers import mlflow_server, postgres_database, postgres_url
from mlflow.tracking import MlflowClient

from ladnn.config import LadnnCfg, load_config
from ladnn.registry.audit import AuditLog, ConcurrentReviewError, audit_database_url
from ladnn.registry.review import Registry
from ladnn.workspace import Workspace

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MODEL_NAME = "race"
ROUNDS = 3
# Seconds to wait for each barrier, result and worker exit before the test gives up.
TIMEOUT = 180
# Seconds the SQLite write lock is held so that both workers reach their insert. SQLite has no
# view of waiting connections, and a waiting insert gives up after pysqlite's default busy
# timeout of 5 seconds.
SQLITE_HOLD = 1.0


@dataclass
class RaceStore:
    backend: str
    # Tracking URI: a SQLAlchemy URL, or the URL of an MLflow server.
    uri: str
    # SQLAlchemy URL of the audit log's database.
    audit_uri: str
    overrides: list[str]
    workspace: Workspace
    # Folder where the store keeps the logged models' files.
    artifacts_dir: Path

    def config(self) -> LadnnCfg:
        return load_config(overrides=self.overrides)


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped afterwards."""
    name = f"ladnn_test_{secrets.token_hex(6)}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        # SQLAlchemy 2.1 reads a plain postgresql:// URL as psycopg 3, which is not installed.
        yield "postgresql+psycopg2://{user}@{host}:{port}/{name}".format(name=name, **POSTGRES)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def log_untrained_versions(cfg: LadnnCfg, workspace: Workspace, image: bytes, count: int) -> None:
    """Log one untrained LA-DNN and register it `count` times as versions 1 to `count`."""
    import mlflow
    import pandas as pd
    import torch

    from ladnn.models.backbones import BACKBONES
    from ladnn.models.ladnn import build_model
    from ladnn.tracking.pyfunc import log_pyfunc_model
    from ladnn.tracking.registry import register_candidate
    from ladnn.tracking.store import configure_mlflow

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
        "tta": False,
    }
    with mlflow.start_run(run_name="untrained"):
        info = log_pyfunc_model(
            model, spec, workspace.root / "model_files", pd.DataFrame({"image": [image]})
        )
    for number in range(1, count + 1):
        version = register_candidate(info.model_uri, MODEL_NAME, {"backbone": "resnet18"})
        assert str(version.version) == str(number)


@contextmanager
def basic_auth_credentials(username: str, password: str) -> Iterator[None]:
    """Set MLflow's credential variables, which spawned workers inherit, and restore them."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(dict(zip(names, (username, password), strict=True)))
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mlflow-server"])
def race_store(request, tmp_path_factory, release_dir: Path) -> Iterator[RaceStore]:
    backend = request.param
    base = tmp_path_factory.mktemp(f"race-{backend}")
    workspace = Workspace.resolve(base / "workspace").ensure()
    overrides = [f"data.root={base}", f"tracking.registered_model={MODEL_NAME}"]
    image = sorted((release_dir / "CT_COVID").glob("*.png"))[0].read_bytes()
    if backend == "mlflow-server":
        password = secrets.token_urlsafe(16)
        artifacts = base / "server-artifacts"
        with (
            postgres_database("ladnn_mlflow") as backend_db,
            postgres_database("ladnn_mlflow_auth") as auth_db,
            postgres_database("ladnn_audit") as audit_db,
            mlflow_server(
                postgres_url(backend_db),
                str(artifacts),
                base / "server",
                auth_database_uri=postgres_url(auth_db),
                admin_password=password,
            ) as url,
            basic_auth_credentials("admin", password),
        ):
            audit_uri = postgres_url(audit_db)
            overrides += [f"tracking.tracking_uri={url}", f"tracking.audit_uri={audit_uri}"]
            store = RaceStore(backend, url, audit_uri, overrides, workspace, artifacts)
            log_untrained_versions(store.config(), workspace, image, 2 * ROUNDS)
            yield store
        return
    if backend == "postgresql":
        uri = request.getfixturevalue("postgres_uri")
        overrides.append(f"tracking.tracking_uri={uri}")
    else:
        uri = workspace.tracking_uri
    store = RaceStore(backend, uri, uri, overrides, workspace, workspace.artifacts_dir)
    log_untrained_versions(store.config(), workspace, image, 2 * ROUNDS)
    yield store


def promote_worker(tracking_uri, audit_uri, index, versions, ready, go, results) -> None:
    """Promote each of `versions` in turn, one per round, and report how each attempt ended.

    Runs in a spawned process with its own registry, as a second reviewer's command would. The
    registry is opened as `open_registry` opens it, without importing that function's module.
    """
    registry = Registry(
        MlflowClient(tracking_uri),
        AuditLog(audit_database_url(tracking_uri, audit_uri)),
        MODEL_NAME,
    )
    registry.reconcile()
    for version in versions:
        try:
            ready.wait(TIMEOUT)
            go.wait(TIMEOUT)
        except BrokenBarrierError:
            return
        try:
            event = registry.promote(
                version, reviewer=f"reviewer-{index}", reason="race", override=True
            )
            results.put((index, version, "promoted", str(event.seq)))
        except ConcurrentReviewError as err:
            results.put((index, version, "concurrent", str(err)))
        except Exception as err:  # reported to the test, which fails on it
            results.put((index, version, type(err).__name__, str(err)))


def libpq_uri(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


@contextmanager
def audit_inserts_blocked(store: RaceStore) -> Iterator[None]:
    """Hold a lock that lets readers of the audit table in and keeps writers out."""
    if store.audit_uri.startswith("postgresql"):
        connection = psycopg2.connect(libpq_uri(store.audit_uri))
        try:
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE ladnn_audit_events IN SHARE MODE")
            yield
        finally:
            connection.rollback()
            connection.close()
    else:
        connection = sqlite3.connect(
            store.audit_uri.removeprefix("sqlite:///"), isolation_level=None
        )
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()


def wait_for_blocked_inserts(store: RaceStore, expected: int) -> None:
    """Return once `expected` inserts wait on the audit table (PostgreSQL), or after a fixed hold
    (SQLite, which cannot list waiting connections)."""
    if not store.audit_uri.startswith("postgresql"):
        time.sleep(SQLITE_HOLD)
        return
    deadline = time.monotonic() + TIMEOUT
    with psycopg2.connect(libpq_uri(store.audit_uri)) as connection, connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_locks "
                "WHERE relation = 'ladnn_audit_events'::regclass AND NOT granted"
            )
            if cursor.fetchone()[0] >= expected:
                return
            connection.rollback()
            time.sleep(0.05)


@dataclass
class RoundResult:
    # (worker index, version, outcome, event seq or error message) per worker.
    outcomes: list[tuple[int, str, str, str]]
    champion: str | None
    new_events: list


def run_race(store: RaceStore, *, hold: bool = True) -> list[RoundResult]:
    """Start two promoting processes and run `ROUNDS` rounds. In round r, worker i promotes
    version 2r+1+i."""
    from ladnn.registry.workflow import open_registry

    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(3)
    go = context.Barrier(3)
    results = context.Queue()
    workers = [
        context.Process(
            target=promote_worker,
            args=(
                store.uri,
                store.audit_uri,
                index,
                [str(2 * r + 1 + index) for r in range(ROUNDS)],
                ready,
                go,
                results,
            ),
        )
        for index in range(2)
    ]
    registry = open_registry(store.config(), store.workspace)
    rounds = []
    for worker in workers:
        worker.start()
    try:
        for _ in range(ROUNDS):
            seen = registry.audit.last_seq(MODEL_NAME)
            ready.wait(TIMEOUT)
            if hold:
                with audit_inserts_blocked(store):
                    go.wait(TIMEOUT)
                    wait_for_blocked_inserts(store, expected=2)
            else:
                go.wait(TIMEOUT)
            outcomes = sorted(results.get(timeout=TIMEOUT) for _ in workers)
            events = [e for e in registry.audit.events(MODEL_NAME) if e.seq > seen]
            rounds.append(RoundResult(outcomes, registry.champion(), events))
    finally:
        ready.abort()
        go.abort()
        for worker in workers:
            worker.join(TIMEOUT)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return rounds


@pytest.fixture(scope="module")
def race(race_store: RaceStore) -> list[RoundResult]:
    return run_race(race_store)


def winners(result: RoundResult) -> list[tuple[int, str, str, str]]:
    return [outcome for outcome in result.outcomes if outcome[2] == "promoted"]


def losers(result: RoundResult) -> list[tuple[int, str, str, str]]:
    return [outcome for outcome in result.outcomes if outcome[2] != "promoted"]


def test_one_promotion_wins(race):
    for number, result in enumerate(race):
        assert len(winners(result)) == 1, (number, result.outcomes)


def test_other_gets_concurrent_error(race):
    for number, result in enumerate(race):
        [loser] = losers(result)
        _, _, outcome, message = loser
        assert outcome == "concurrent", (number, loser)
        assert f"another review decision on {MODEL_NAME} was recorded at the same time" in message
        assert "reload the registry state and decide again" in message


def test_champion_is_winner(race):
    for number, result in enumerate(race):
        [(_, version, _, _)] = winners(result)
        assert result.champion == version, number


def test_one_event_per_round(race):
    for number, result in enumerate(race):
        [(index, version, _, seq)] = winners(result)
        [event] = result.new_events
        assert event.seq == int(seq), number
        assert event.action == "promote", number
        assert event.to_version == version, number
        assert event.reviewer == f"reviewer-{index}", number


def test_log_chains_rounds(race):
    events = [event for result in race for event in result.new_events]
    assert [event.seq for event in events] == list(range(1, ROUNDS + 1))
    for previous, event in zip(events, events[1:], strict=False):
        assert event.from_version == previous.to_version


def test_audit_trail_matches_registry(race_store, race):
    """Read back from the stores themselves: one event per round, and the registry's champion
    alias and review tags follow the last event."""
    events = AuditLog(race_store.audit_uri).events(MODEL_NAME)
    assert [event.seq for event in events] == list(range(1, ROUNDS + 1))
    client = MlflowClient(race_store.uri)
    champion = client.get_registered_model(MODEL_NAME).aliases.get("champion")
    assert str(champion) == events[-1].to_version
    for event in events:
        tags = client.get_model_version(MODEL_NAME, event.to_version).tags
        assert tags.get("review_state") == "approved", event.to_version


def test_model_files_in_store_folder(race_store):
    """The logged model's files are in the store's artifact folder; behind a tracking server
    that is the server's `--artifacts-destination`, reached through the server's proxy."""
    assert list(race_store.artifacts_dir.rglob("MLmodel")), race_store.artifacts_dir
