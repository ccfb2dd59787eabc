"""The `ingest-inbox` flow: ingest every batch dropped into `<workspace>/inbox/`.

A batch is a folder or a zip archive placed in the inbox. It is ingested once it has not changed
for `settle_seconds` (so half-copied batches wait). A run first claims it by renaming it into
`inbox/processing/`, so two runs never ingest the same batch; afterwards it moves to
`inbox/processed/` or, when its import fails, to `inbox/failed/` with the error in a `.error.txt`
file beside it.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger

from pipelines.common import resolve
from pipelines.ingest import ingest_flow

__all__ = ["inbox_flow", "pending_batches"]

_SKIP = {"processed", "failed", "processing"}


def _latest_change(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    times = [item.stat().st_mtime for item in path.rglob("*")]
    return max([path.stat().st_mtime, *times])


def pending_batches(inbox: Path, settle_seconds: float) -> list[Path]:
    """Batches in the inbox that have been still for `settle_seconds`, oldest first."""
    if not inbox.is_dir():
        return []
    now = time.time()
    entries = [
        entry
        for entry in inbox.iterdir()
        if entry.name not in _SKIP
        and not entry.name.startswith(".")
        and (entry.is_dir() or entry.suffix.lower() == ".zip")
        and now - _latest_change(entry) >= settle_seconds
    ]
    return sorted(entries, key=_latest_change)


def _move(entry: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{entry.name}"
    shutil.move(str(entry), target)
    return target


@flow(name="ingest-inbox")
def inbox_flow(
    settle_seconds: float = 10.0,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    workspace: str | None = None,
) -> list[dict]:
    """Ingest each settled batch of the workspace inbox as its own `ingest` run."""
    logger = get_run_logger()
    _, space = resolve(config_path, overrides, profile, workspace)
    inbox = space.root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    results = []
    for pending in pending_batches(inbox, settle_seconds):
        entry = inbox / "processing" / pending.name
        entry.parent.mkdir(exist_ok=True)
        try:
            pending.rename(entry)
        except FileNotFoundError:
            logger.info("batch %s was claimed by another run", pending.name)
            continue
        logger.info("ingesting %s from the inbox", entry.name)
        try:
            summary = ingest_flow(
                source=str(entry),
                config_path=config_path,
                overrides=overrides,
                profile=profile,
                workspace=str(space.root),
            )
        except Exception as err:  # noqa: BLE001 - one bad batch must not stop the others
            target = _move(entry, inbox / "failed")
            target.with_name(target.name + ".error.txt").write_text(
                f"{type(err).__name__}: {err}\n"
            )
            logger.error("batch %s failed and was moved to %s: %s", entry.name, target, err)
            results.append({"batch": entry.name, "error": str(err)})
            continue
        _move(entry, inbox / "processed")
        results.append({"batch": entry.name, **summary})
    return results
