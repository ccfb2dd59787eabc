"""The canonical dataset folder: `images/<image_id>.png` and `metadata.csv`, changed atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

from ladnn.data.schema import COLUMNS, coerce_metadata, empty_metadata

__all__ = ["DatasetStore", "atomic_write_bytes"]

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class DatasetStore:
    """The `data/` folder under a root. The metadata file is the commit point of every change.

    New images are written first, under their content ids, and the metadata that lists them is
    replaced last in one rename; an image file that no metadata row lists is a leftover of an
    interrupted import and is removed by `remove_orphans`.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.images_dir = self.data_dir / "images"
        self.metadata_path = self.data_dir / "metadata.csv"

    def image_path(self, image_id: str) -> Path:
        return self.images_dir / f"{image_id}.png"

    def exists(self) -> bool:
        return self.metadata_path.is_file()

    def read_metadata(self) -> pd.DataFrame:
        if not self.metadata_path.is_file():
            return empty_metadata()
        frame = pd.read_csv(self.metadata_path, dtype=str, keep_default_na=False, na_values=[""])
        return coerce_metadata(frame)

    def write_metadata(self, frame: pd.DataFrame) -> None:
        frame = coerce_metadata(frame)
        text = frame.to_csv(index=False, columns=list(COLUMNS), lineterminator="\n")
        atomic_write_bytes(self.metadata_path, text.encode("utf-8"))

    def add_images(self, pngs: dict[str, bytes]) -> None:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        for image_id, data in pngs.items():
            path = self.image_path(image_id)
            if not path.exists():
                atomic_write_bytes(path, data)

    def commit(self, new_rows: pd.DataFrame, pngs: dict[str, bytes]) -> pd.DataFrame:
        """Add images and their rows; the metadata rename at the end makes them part of `data/`."""
        missing = set(new_rows["image_id"]) - set(pngs) - self._present_ids(new_rows["image_id"])
        if missing:
            raise ValueError(f"no image data for new row(s) {sorted(missing)[:5]}")
        self.add_images(pngs)
        merged = pd.concat([self.read_metadata(), new_rows], ignore_index=True)
        merged = coerce_metadata(merged)
        self.write_metadata(merged)
        return merged

    def _present_ids(self, ids: pd.Series) -> set[str]:
        return {image_id for image_id in ids if self.image_path(image_id).is_file()}

    def remove_orphans(self) -> list[str]:
        """Delete image and temporary files that the committed metadata does not list."""
        if not self.images_dir.is_dir():
            return []
        listed = set(self.read_metadata()["image_id"])
        removed = []
        for path in self.images_dir.iterdir():
            if path.suffix == ".png" and path.stem in listed:
                continue
            path.unlink()
            removed.append(path.name)
        for path in self.data_dir.glob(".*.tmp"):
            path.unlink()
            removed.append(path.name)
        if removed:
            logger.warning(
                "removed %d file(s) left in %s by an interrupted import",
                len(removed),
                self.data_dir,
            )
        return removed
