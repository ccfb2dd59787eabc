"""Importing batches into the dataset store: dedup, quarantine, orphan files and kept splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ladnn.data.images import encode_png, normalise_image
from ladnn.data.importer import ImportItem, import_items
from ladnn.data.splits import split_for_patient
from ladnn.data.store import DatasetStore
from ladnn.validation.image_metrics import REFERENCE_CACHE_NAME, load_reference_metrics


@pytest.fixture(scope="module")
def real_images(release_dir: Path) -> list[Path]:
    """Return four small release images: two COVID PNGs and two negative JPEGs."""
    covid = sorted((release_dir / "CT_COVID").glob("*.png"))[:2]
    negative = sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[:2]
    return covid + negative


def _item(path: Path, patient_id: str, *, file_name: str | None = None, **fields) -> ImportItem:
    return ImportItem(
        file_name=file_name or path.name,
        read_bytes=path.read_bytes,
        label=1 if path.parent.name == "CT_COVID" else 0,
        patient_id=patient_id,
        source="test",
        **fields,
    )


def _items(paths: list[Path]) -> list[ImportItem]:
    return [_item(path, f"patient-{index}") for index, path in enumerate(paths)]


def _patient_not_in(split: str) -> str:
    """Return a patient id whose hashed split is not `split`."""
    for index in range(100):
        patient_id = f"sticky-{index}"
        if split_for_patient(patient_id) != split:
            return patient_id
    raise AssertionError(f"no patient id outside split {split!r} among 100 tries")


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "root")


def test_import_writes_rows(store, real_images):
    report = import_items(_items(real_images), store, "batch-1", progress=False)
    metadata = store.read_metadata()

    assert report.added == [path.name for path in real_images]
    assert report.rejected == []
    assert len(metadata) == len(real_images)
    assert sorted(metadata["file_name"]) == sorted(path.name for path in real_images)
    assert set(metadata["batch_id"]) == {"batch-1"}
    for image_id in metadata["image_id"]:
        assert store.image_path(image_id).is_file(), image_id


def test_import_labels_and_lesions(store, real_images):
    items = _items(real_images)
    items[0].lesions = {"GGO": 1, "Csld": 0}

    import_items(items, store, "batch-1", progress=False)
    row = store.read_metadata().set_index("file_name").loc[real_images[0].name]

    assert row["label"] == 1
    assert row["GGO"] == 1
    assert row["Csld"] == 0
    assert pd.isna(row["CrPa"])


def test_metadata_sorted_by_image_id(store, real_images):
    import_items(_items(real_images), store, "batch-1", progress=False)

    on_disk = pd.read_csv(store.metadata_path, dtype=str)

    assert list(on_disk["image_id"]) == sorted(on_disk["image_id"])


def test_reimport_adds_nothing(store, real_images):
    import_items(_items(real_images), store, "batch-1", progress=False)
    before = store.metadata_path.read_bytes()

    report = import_items(_items(real_images), store, "batch-1", progress=False)

    assert report.added == []
    assert report.already_present == [path.name for path in real_images]
    assert report.duplicates == []
    assert not report.changed
    assert store.metadata_path.read_bytes() == before


def test_renamed_image_is_duplicate(store, real_images):
    import_items(_items(real_images[:1]), store, "batch-1", progress=False)

    renamed = _item(real_images[0], "patient-9", file_name="renamed.png")
    report = import_items([renamed], store, "batch-2", progress=False)

    assert report.added == []
    assert report.duplicates == [("renamed.png", real_images[0].name)]
    assert len(store.read_metadata()) == 1


def test_duplicate_within_batch(store, real_images):
    original = _item(real_images[0], "patient-0")
    copy = _item(real_images[0], "patient-0", file_name="copy.png")

    report = import_items([original, copy], store, "batch-1", progress=False)

    assert report.added == [real_images[0].name]
    assert report.duplicates == [("copy.png", real_images[0].name)]
    assert len(store.read_metadata()) == 1


def test_bad_file_quarantined(store, real_images, tmp_path):
    quarantine = tmp_path / "quarantine"
    broken = ImportItem(
        file_name="batch/broken.png",
        read_bytes=lambda: b"this is not a PNG",
        label=0,
        patient_id="patient-broken",
        source="test",
    )
    items = [*_items(real_images[:2]), broken]

    report = import_items(items, store, "batch-1", quarantine_dir=quarantine, progress=False)
    [reason_file] = (quarantine / "batch-1").glob("*-broken.png.reason.json")
    reason = json.loads(reason_file.read_text("utf-8"))
    [copy] = (quarantine / "batch-1").glob("*-broken.png")

    assert [name for name, _ in report.rejected] == ["batch/broken.png"]
    assert report.added == [path.name for path in real_images[:2]]
    assert len(store.read_metadata()) == 2
    assert copy.read_bytes() == b"this is not a PNG"
    assert reason["file_name"] == "batch/broken.png"
    assert reason["batch_id"] == "batch-1"
    assert "batch/broken.png" in reason["reason"]
    assert "not an image file" in reason["reason"]


def test_remove_orphans_deletes_unlisted(store, real_images):
    import_items(_items(real_images[:2]), store, "batch-1", progress=False)
    orphan = store.images_dir / "0123456789abcdef01234567.png"
    orphan.write_bytes(real_images[0].read_bytes())
    leftover = store.data_dir / ".metadata.csv.abc.tmp"
    leftover.write_bytes(b"partial")

    removed = store.remove_orphans()

    assert sorted(removed) == [leftover.name, orphan.name]
    assert not orphan.exists()
    assert not leftover.exists()
    for image_id in store.read_metadata()["image_id"]:
        assert store.image_path(image_id).is_file(), image_id


def test_remove_orphans_empty_store(store):
    assert store.remove_orphans() == []


def test_patient_keeps_split(store, real_images):
    patient_id = _patient_not_in("val")
    first = _item(real_images[0], patient_id, split="val")
    import_items([first], store, "batch-1", progress=False)

    later = _item(real_images[1], patient_id)
    import_items([later], store, "batch-2", progress=False)
    splits = store.read_metadata().set_index("file_name")["split"]

    assert splits[real_images[0].name] == "val"
    assert splits[real_images[1].name] == "val"


def test_new_patient_hashed_split(store, real_images):
    import_items([_item(real_images[0], "patient-new")], store, "batch-1", progress=False)

    split = store.read_metadata()["split"].iloc[0]

    assert split == split_for_patient("patient-new")


def test_conflicting_split_rejected(store, real_images):
    patient_id = "patient-conflict"
    first = _item(real_images[0], patient_id, split="train")
    import_items([first], store, "batch-1", progress=False)
    conflicting = _item(real_images[1], patient_id, split="test")

    with pytest.raises(ValueError) as caught:
        import_items([conflicting], store, "batch-2", progress=False)

    assert patient_id in str(caught.value)
    assert len(store.read_metadata()) == 1


def test_imported_release_rows(imported_release):
    metadata = imported_release.read_metadata()

    assert len(metadata) == 746
    assert metadata["image_id"].is_unique
    assert int((metadata["label"] == 1).sum()) == 349


def test_imported_release_files_exist(imported_release):
    metadata = imported_release.read_metadata()

    missing = [i for i in metadata["image_id"] if not imported_release.image_path(i).is_file()]

    assert missing == []
    assert len(list(imported_release.images_dir.iterdir())) == 746


def test_stored_files_match_image_ids(imported_release):
    # The canonical PNGs are encoded in worker threads. Each stored file must still decode to the
    # pixels that its image id names and be the canonical encoding of those pixels.
    metadata = imported_release.read_metadata()

    mismatched = []
    for image_id in metadata["image_id"]:
        data = imported_release.image_path(image_id).read_bytes()
        normalised = normalise_image(data, f"{image_id}.png")
        if normalised.image_id != image_id or encode_png(normalised.image) != data:
            mismatched.append(image_id)

    assert mismatched == []


def test_import_caches_reference_metrics(store, real_images, tmp_path):
    validation_dir = tmp_path / "validation"
    cache = validation_dir / REFERENCE_CACHE_NAME

    import_items(
        _items(real_images[:2]), store, "batch-1", validation_dir=validation_dir, progress=False
    )
    first_ids = sorted(store.read_metadata()["image_id"])
    first_cache = pd.read_csv(cache, dtype={"image_id": str, "phash": str})
    import_items(
        _items(real_images[2:]), store, "batch-2", validation_dir=validation_dir, progress=False
    )
    second_cache = pd.read_csv(cache, dtype={"image_id": str, "phash": str})

    # The first batch met an empty dataset, so only the import itself can have cached its images.
    assert sorted(first_cache["image_id"]) == first_ids
    assert sorted(second_cache["image_id"]) == sorted(store.read_metadata()["image_id"])
    # What the importer cached equals what measuring the stored canonical PNGs gives.
    pd.testing.assert_frame_equal(
        load_reference_metrics(store, cache), load_reference_metrics(store, None), check_dtype=False
    )
