"""Recognise which publisher layout a batch path has and read it with the matching reader."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ladnn.data.batches import read_ladnn_batch
from ladnn.data.contributions import read_contribution
from ladnn.data.importer import ImportItem
from ladnn.data.release import RELEASE_BATCH_ID, read_release

__all__ = ["BatchKind", "detect_kind", "read_batch"]

BatchKind = Literal["auto", "release", "ladnn-batch", "folder"]


def detect_kind(path: Path) -> str:
    """`release` for a COVID-CT release folder, `ladnn-batch` for LA-DNN class zips (or a folder of
    them), `folder` for anything else (a contributed folder or zip with a CSV)."""
    if path.is_dir() and (path / "CT_COVID").is_dir() and (path / "CT_NonCOVID").is_dir():
        return "release"
    zips = [path] if path.is_file() and path.suffix.lower() == ".zip" else []
    if path.is_dir():
        zips = sorted(path.glob("*.zip"))
    if zips and all("covid" in zip_path.name.lower() for zip_path in zips):
        return "ladnn-batch"
    return "folder"


def read_batch(
    path: str | Path, kind: BatchKind = "auto", *, label: int | None = None
) -> tuple[str, list[ImportItem]]:
    """Read any supported batch; return its batch id and items."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"batch not found: {path}")
    chosen = detect_kind(path) if kind == "auto" else kind
    if chosen == "release":
        return RELEASE_BATCH_ID, read_release(path)
    if chosen == "ladnn-batch":
        return read_ladnn_batch(path)
    if chosen == "folder":
        return read_contribution(path, label=label)
    raise ValueError(f"unknown batch kind {kind!r}: expected auto, release, ladnn-batch or folder")
