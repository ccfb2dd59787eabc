"""Flow runs whose process died: mark them Crashed and start them again.

Every flow run that `ladnn flows serve` starts sends a heartbeat event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (30 unless set). A run whose process is killed, or
whose machine goes away, stops sending them but stays `Running` on the server. Two things act on
such a run:

- an automation on the Prefect server marks it `Crashed` when no heartbeat and no final state
  arrives within `stale_after` seconds of the last heartbeat. It runs on the server, so it works
  while no worker is up.
- The serving process, when it starts and then every `interval` seconds, marks `Crashed` each
  `Running` run of its deployments whose last heartbeat (or start, when it sent none) is older than
  `stale_after`, then starts a new run, with the same parameters, of each crashed run of a
  deployment it restarts (`retrain` and `cycle`). The new run resumes the work: finished training
  tasks come back from Prefect's result cache and an interrupted training continues from its last
  checkpoint, in the same MLflow run.

A run is restarted at most `max_attempts` times in a row, so a run that crashes every time (out of
memory, say) stops being retried and stays `Crashed` for a maintainer to look at.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.events.actions import ChangeFlowRunState
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

__all__ = [
    "HEARTBEAT_SECONDS",
    "RESTARTED_DEPLOYMENTS",
    "Recovery",
    "automation_name",
    "ensure_crash_automation",
    "recover_runs",
    "start_recovery_loop",
]

logger = logging.getLogger(__name__)

# Seconds between a flow run's heartbeats. Prefect accepts 30 or more.
HEARTBEAT_SECONDS = 30
# Deployments whose crashed runs are started again. Ingest and inbox runs are not, because the
# inbox scan picks an interrupted batch up again on its next round.
RESTARTED_DEPLOYMENTS = ("retrain/retrain", "cycle/cycle")
# Parameters a restarted run gets on top of the crashed run's: `cycle` resumes its training only
# when asked to, while `retrain` always does.
RESTART_PARAMETERS = {"cycle/cycle": {"resume": True}}

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# Tags on flow runs: the attempt a restarted run is, and the run that replaced a crashed one.
ATTEMPT_TAG = "ladnn-restart-attempt:"
REPLACED_TAG = "ladnn-restarted-as:"
_FINAL_EVENTS = {
    f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed", "Paused")
}


@dataclass(frozen=True)
class Recovery:
    """Outcome for one stopped flow run: marked crashed, started again, or given up."""

    deployment: str
    crashed_run: UUID
    marked_crashed: bool
    new_run: UUID | None
    attempt: int
    message: str


def automation_name(workspace: str) -> str:
    """Name of the crash-marking automation of one workspace's deployments."""
    return f"ladnn: crash silent flow runs ({hashlib.sha256(workspace.encode()).hexdigest()[:8]})"


def crash_automation(workspace: str, deployment_ids: Iterable[UUID], stale_after: float):
    """Build the automation that marks a run of these deployments Crashed once its heartbeats
    stop."""
    related = [f"prefect.deployment.{deployment_id}" for deployment_id in deployment_ids]
    return Automation(
        name=automation_name(workspace),
        description=(
            f"Marks a flow run of the ladnn deployments serving {workspace} Crashed when it sends "
            f"no heartbeat for {stale_after:.0f} s and has not ended."
        ),
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *_FINAL_EVENTS},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.id": related}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=stale_after),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {stale_after:.0f} s: the flow run's process is gone.",
            )
        ],
    )


def ensure_crash_automation(
    workspace: str, deployment_ids: Iterable[UUID], stale_after: float
) -> UUID | None:
    """Create or replace the crash-marking automation; return its id, or None if refused."""
    automation = crash_automation(workspace, list(deployment_ids), stale_after)
    try:
        with get_client(sync_client=True) as client:
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
        return automation.create().id
    except Exception as err:  # noqa: BLE001 - a server without automations fails in many ways
        logger.warning(
            "creating the automation that marks silent flow runs Crashed failed (%s), so only "
            "`ladnn flows serve` marks them, when it checks",
            err,
        )
        return None


def _attempt(run: FlowRun) -> int:
    for tag in run.tags:
        if tag.startswith(ATTEMPT_TAG):
            return int(tag.removeprefix(ATTEMPT_TAG))
    return 0


def _last_sign_of_life(client: SyncPrefectClient, run: FlowRun) -> datetime:
    """When the run last sent a heartbeat, or else entered its current state."""
    since = run.state.timestamp if run.state else run.created
    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=1,
    )
    if page.events:
        return max(page.events[0].occurred, since)
    return since


def _runs(client: SyncPrefectClient, deployment_ids: list[UUID], states: list[StateType]):
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
    )


def _mark_stale_runs_crashed(
    client: SyncPrefectClient,
    names: dict[UUID, str],
    workspace: str,
    stale_after: float,
) -> dict[UUID, str]:
    """Mark Crashed the silent `Running` runs; return their ids with their deployments' names."""
    marked = {}
    now = datetime.now(UTC)
    for run in _runs(client, list(names), [StateType.RUNNING]):
        if run.parameters.get("workspace") != workspace:
            continue
        silent = (now - _last_sign_of_life(client, run)).total_seconds()
        if silent < stale_after:
            continue
        message = f"No heartbeat for {silent:.0f} s: the flow run's process is gone."
        # Not forced: a run that ended since it was read keeps its final state.
        result = client.set_flow_run_state(run.id, Crashed(message=message))
        if result.status != SetStateStatus.ACCEPT:
            continue
        logger.warning("flow run %s (%s): %s", run.name, names[run.deployment_id], message)
        marked[run.id] = names[run.deployment_id]
    return marked


def _deployment_ids(client: SyncPrefectClient, deployments: Iterable[str]) -> dict[UUID, str]:
    """Ids of the deployments that exist, with their `flow/deployment` names."""
    names = {}
    for name in deployments:
        try:
            names[client.read_deployment_by_name(name).id] = name
        except ObjectNotFound:
            continue
    return names


def recover_runs(
    workspace: str,
    deployments: Iterable[str],
    restarted: Iterable[str] = RESTARTED_DEPLOYMENTS,
    stale_after: float = 4 * HEARTBEAT_SECONDS,
    max_attempts: int = 2,
) -> list[Recovery]:
    """Mark silent runs of `deployments` (as `flow/deployment` names) Crashed, then start again
    each crashed run of a `restarted` deployment that has not been started again yet.

    Only runs whose `workspace` parameter is `workspace` are touched; deployments that do not
    exist yet are skipped.
    """
    restarted = set(restarted)
    done: list[Recovery] = []
    with get_client(sync_client=True) as client:
        names = _deployment_ids(client, deployments)
        if not names:
            return done
        marked = _mark_stale_runs_crashed(client, names, workspace, stale_after)
        for run in _runs(client, list(names), [StateType.CRASHED]):
            name = names[run.deployment_id]
            if run.parameters.get("workspace") != workspace or name not in restarted:
                continue
            if any(tag.startswith(REPLACED_TAG) for tag in run.tags):
                continue
            attempt = _attempt(run) + 1
            if attempt > max_attempts:
                message = (
                    f"not started again: it crashed on restart {attempt - 1} of {max_attempts}; "
                    "read its logs, then run the deployment by hand"
                )
                client.update_flow_run(run.id, tags=[*run.tags, f"{REPLACED_TAG}none"])
                logger.error("flow run %s (%s) %s", run.name, name, message)
                done.append(Recovery(name, run.id, run.id in marked, None, attempt, message))
                continue
            new_run = client.create_flow_run_from_deployment(
                run.deployment_id,
                parameters={**run.parameters, **RESTART_PARAMETERS.get(name, {})},
                tags=[tag for tag in run.tags if not tag.startswith(ATTEMPT_TAG)]
                + [f"{ATTEMPT_TAG}{attempt}"],
                idempotency_key=f"ladnn-restart-{run.id}",
            )
            client.update_flow_run(run.id, tags=[*run.tags, f"{REPLACED_TAG}{new_run.id}"])
            message = f"crashed; started again as {new_run.name} ({new_run.id})"
            logger.warning("flow run %s (%s) %s", run.name, name, message)
            done.append(Recovery(name, run.id, run.id in marked, new_run.id, attempt, message))
        handled = {recovery.crashed_run for recovery in done}
        done.extend(
            Recovery(name, run_id, True, None, 0, "marked Crashed")
            for run_id, name in marked.items()
            if run_id not in handled
        )
    return done


def start_recovery_loop(
    workspace: str,
    deployments: Iterable[str],
    interval: float = HEARTBEAT_SECONDS,
    stale_after: float = 4 * HEARTBEAT_SECONDS,
    max_attempts: int = 2,
) -> threading.Event:
    """Check for silent and crashed runs now and then every `interval` seconds, in a daemon
    thread; create the crash-marking automation once the deployments exist.

    Returns the event that stops the loop when set.
    """
    deployments = list(deployments)
    stop = threading.Event()

    def loop() -> None:
        automation = None
        while not stop.is_set():
            try:
                if automation is None:
                    with get_client(sync_client=True) as client:
                        ids = _deployment_ids(client, deployments)
                    if len(ids) == len(deployments):
                        automation = ensure_crash_automation(workspace, ids, stale_after) or False
                recover_runs(
                    workspace, deployments, stale_after=stale_after, max_attempts=max_attempts
                )
            except Exception:  # noqa: BLE001 - keep checking after a transient server error
                logger.exception("checking for crashed flow runs failed; trying again")
            stop.wait(interval)

    threading.Thread(target=loop, name="ladnn-recovery", daemon=True).start()
    return stop
