"""The data-validation gate on real images made bad in each way, imported after the real release."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ladnn.data.batches import read_ladnn_batch
from ladnn.data.importer import ImportItem, ImportReport, import_items, validate_items
from ladnn.data.lesions import UnknownLesionError
from ladnn.data.release import read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.validation import BatchValidationError, list_quarantine
from ladnn.validation.image_metrics import REFERENCE_CACHE_NAME
from ladnn.validation.near_duplicates import hamming_distances, near_duplicate_pairs, phash_values
from ladnn.validation.results import RESULT_FILE, read_result
from ladnn.workspace import Workspace

BATCH_ID = "contrib-bad-batch"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _center_crop(data: bytes, side: int) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        left, top = (opened.width - side) // 2, (opened.height - side) // 2
        return _png_bytes(opened.convert("RGB").crop((left, top, left + side, top + side)))


def _item(file_name: str, data: bytes, label: int, patient_id: str, **fields) -> ImportItem:
    return ImportItem(
        file_name=file_name,
        read_bytes=lambda data=data: data,
        label=label,
        patient_id=patient_id,
        source="test contribution",
        **fields,
    )


def copy_dataset(store: DatasetStore, root: Path) -> DatasetStore:
    """Copy the imported release's data/ folder under `root`, so a test may change it."""
    shutil.copytree(store.data_dir, root / "data")
    return DatasetStore(root)


@pytest.fixture(scope="module")
def release_test_image(release_dir: Path) -> Path:
    """Return a COVID PNG of the release's official test split."""
    test_names = {
        Path(item.file_name).name
        for item in read_release(release_dir)
        if item.split == "test" and item.label == 1
    }
    return sorted(
        path for path in (release_dir / "CT_COVID").glob("*.png") if path.name in test_names
    )[0]


# File name -> the checks that must reject it, and nothing else.
EXPECTED_REASONS = {
    "bad/truncated.png": {"decodes"},
    "bad/empty.png": {"decodes"},
    "bad/notes.png": {"decodes"},
    "bad/blank.png": {"not_blank", "not_mostly_black"},
    "bad/negative-with-lesion.png": {"negative_without_lesion"},
    "bad/test-copy.png": {"no_exact_leak"},
    "bad/test-copy-resized.jpg": {"no_near_duplicate_leak"},
    "bad/tiny.png": {"width_in_range", "height_in_range"},
    "bad/unknown-lesion.png": {"metadata_valid"},
    "bad/invalid-lesion-value.png": {"metadata_valid"},
    "bad/invalid-label.png": {"metadata_valid", "label_present"},
    "bad/invalid-date.png": {"collected_on_is_date"},
}


@dataclass
class BadBatchImport:
    store: DatasetStore
    quarantine_dir: Path
    validation_dir: Path
    report: ImportReport
    good_names: list[str]
    rows_before: int


@pytest.fixture(scope="module")
def bad_batch(
    tmp_path_factory, imported_release: DatasetStore, new_data_dir: Path, release_test_image: Path
) -> BadBatchImport:
    """Import LA-DNN's 9 negative slices of 5.16 and 6 COVID slices of 6.2 with twelve bad files
    into a copy of the release."""
    base = tmp_path_factory.mktemp("bad-batch")
    store = copy_dataset(imported_release, base / "root")
    _, negatives = read_ladnn_batch(new_data_dir / "5.16")
    _, covid = read_ladnn_batch(new_data_dir / "6.2")
    good = [*negatives, *covid[10:16]]
    original = release_test_image.read_bytes()
    with Image.open(release_test_image) as opened:
        picture = opened.convert("RGB")
    resized = picture.resize((round(picture.width * 0.9), round(picture.height * 0.9)))
    jpeg = io.BytesIO()
    resized.save(jpeg, format="JPEG", quality=90)

    bad = [
        _item("bad/truncated.png", original[: len(original) // 2], 1, "bad:truncated"),
        _item("bad/empty.png", b"", 1, "bad:empty"),
        _item("bad/notes.png", b"imgname,CVD19\nslice.png,CVD19\n", 1, "bad:notes"),
        _item("bad/blank.png", _png_bytes(Image.new("RGB", (256, 256))), 0, "bad:blank"),
        _item(
            "bad/negative-with-lesion.png",
            covid[0].read_bytes(),
            0,
            "bad:negative",
            lesions={"GGO": 1, "Csld": 0},
        ),
        _item("bad/test-copy.png", original, 1, "bad:new-patient"),
        _item("bad/test-copy-resized.jpg", jpeg.getvalue(), 1, "bad:new-patient-2"),
        _item("bad/tiny.png", _center_crop(covid[1].read_bytes(), 16), 1, "bad:tiny"),
        _item(
            "bad/unknown-lesion.png",
            covid[2].read_bytes(),
            1,
            "bad:unknown-lesion",
            lesions={"GGO": 1, "Pleural effusion": 1},
        ),
        _item(
            "bad/invalid-lesion-value.png",
            covid[3].read_bytes(),
            1,
            "bad:lesion-value",
            lesions={"Csld": "maybe"},
        ),
        _item("bad/invalid-label.png", covid[4].read_bytes(), "2", "bad:label"),
        _item(
            "bad/invalid-date.png",
            covid[5].read_bytes(),
            1,
            "bad:date",
            collected_on="2026-13-45",
        ),
    ]
    rows_before = len(store.read_metadata())
    report = import_items(
        [*good, *bad],
        store,
        BATCH_ID,
        quarantine_dir=base / "quarantine",
        validation_dir=base / "validation",
        progress=False,
    )
    return BadBatchImport(
        store,
        base / "quarantine",
        base / "validation",
        report,
        [item.file_name for item in good],
        rows_before,
    )


def test_bad_batch_keeps_good_rows(bad_batch):
    metadata = bad_batch.store.read_metadata()

    assert bad_batch.report.added == bad_batch.good_names
    assert len(metadata) == bad_batch.rows_before + len(bad_batch.good_names)
    assert not set(EXPECTED_REASONS) & set(metadata["file_name"])


def test_summary_counts_each_file_once(bad_batch):
    """A copy of a test image under a new patient is listed as a duplicate of the dataset image,
    but counted once, as rejected."""
    report = bad_batch.report
    files = len(bad_batch.good_names) + len(EXPECTED_REASONS)

    assert report.duplicates[0][0] == "bad/test-copy.png"
    assert report.summary().endswith(
        f"{len(report.added)} added, 0 already present, 0 duplicate(s), "
        f"{len(EXPECTED_REASONS)} rejected"
    )
    assert len(report.added) + len(report.rejected) == files


def test_bad_batch_rejects_each_file(bad_batch):
    assert sorted(name for name, _ in bad_batch.report.rejected) == sorted(EXPECTED_REASONS)


@pytest.mark.parametrize("file_name", sorted(EXPECTED_REASONS))
def test_bad_file_reason(bad_batch, file_name):
    result = read_result(bad_batch.validation_dir, bad_batch.report.validation_id)
    [rejected] = [row for row in result.rejected if row.file_name == file_name]

    assert {reason.expectation for reason in rejected.reasons} == EXPECTED_REASONS[file_name]
    for reason in rejected.reasons:
        assert reason.detail, reason


def test_decode_failure_details(bad_batch):
    reasons = dict(bad_batch.report.rejected)

    assert "file is empty (0 bytes)" in reasons["bad/empty.png"]
    assert "not an image file" in reasons["bad/notes.png"]
    assert "corrupt or truncated" in reasons["bad/truncated.png"]


def test_leak_reasons_name_both_files(bad_batch, release_test_image):
    reasons = dict(bad_batch.report.rejected)
    original = f"CT_COVID/{release_test_image.name}"

    for name in ("bad/test-copy.png", "bad/test-copy-resized.jpg"):
        assert name in reasons[name]
        assert original in reasons[name]
        assert "split test" in reasons[name]
    assert "pHash distance" in reasons["bad/test-copy-resized.jpg"]


def test_quarantine_records(bad_batch):
    entries = {entry.file_name: entry for entry in list_quarantine(bad_batch.quarantine_dir)}

    assert sorted(entries) == sorted(EXPECTED_REASONS)
    for name, entry in entries.items():
        record = json.loads(entry.reason_path.read_text("utf-8"))
        assert entry.path.is_file(), name
        assert entry.path.parent.name == BATCH_ID
        assert record["validation_id"] == bad_batch.report.validation_id
        assert {reason["expectation"] for reason in record["reasons"]} == EXPECTED_REASONS[name]
        assert all(set(reason) >= {"expectation", "detail"} for reason in record["reasons"])
        assert record["item"]["file_name"] == name


def test_quarantine_keeps_bytes(bad_batch):
    entries = {entry.file_name: entry for entry in list_quarantine(bad_batch.quarantine_dir)}

    assert entries["bad/empty.png"].path.read_bytes() == b""
    assert entries["bad/notes.png"].path.read_bytes().startswith(b"imgname")


def test_metrics_table_one_row_per_file(bad_batch):
    result = read_result(bad_batch.validation_dir, bad_batch.report.validation_id)
    metrics = pd.read_csv(result.directory / "metrics.csv")
    by_name = metrics.set_index("file_name")

    assert len(metrics) == len(bad_batch.good_names) + len(EXPECTED_REASONS)
    assert not by_name.loc["bad/empty.png", "decodes"]
    assert by_name.loc["bad/empty.png", "file_size_bytes"] == 0
    assert "not an image file" in by_name.loc["bad/notes.png", "decode_error"]
    assert by_name.loc["bad/tiny.png", "width"] == 16
    assert by_name.loc["bad/blank.png", "near_black_fraction"] == 1.0
    assert by_name.loc["bad/blank.png", "intensity_std"] == 0.0
    assert by_name.loc["bad/test-copy.png", "outcome"] == "conflicting_duplicate"
    assert by_name["phash"].dropna().str.fullmatch("[0-9a-f]{16}").all()


def test_result_json_and_docs(bad_batch):
    directory = bad_batch.validation_dir / bad_batch.report.validation_id
    record = json.loads((directory / RESULT_FILE).read_text("utf-8"))

    assert bad_batch.report.validation_id.startswith(f"val-{BATCH_ID}-")
    assert record["success"] is True
    assert record["counts"]["rejected"] == len(EXPECTED_REASONS)
    assert record["counts"]["files"] == len(bad_batch.good_names) + len(EXPECTED_REASONS)
    assert (directory / "docs" / "index.html").is_file()
    assert list((directory / "docs" / "validations").rglob("*.html"))
    assert (bad_batch.validation_dir / REFERENCE_CACHE_NAME).is_file()


def test_unknown_lesion_header_stops_reading(tmp_path, release_test_image):
    batch = tmp_path / "7.1"
    batch.mkdir()
    with zipfile.ZipFile(batch / "7.1_covidct.zip", "w") as archive:
        archive.write(release_test_image, f"7.1_covidct/{release_test_image.name}")
    (batch / "meta.csv").write_text(
        f"imgname,CVD19,GGO,Pleural effusion\n{release_test_image.name},CVD19,GGO,\n",
        encoding="utf-8",
    )

    with pytest.raises(UnknownLesionError) as caught:
        read_ladnn_batch(batch)

    assert "'Pleural effusion'" in str(caught.value)
    assert "meta.csv" in str(caught.value)


def test_unknown_lesion_key_rejects_row(tmp_path, new_data_dir):
    store = DatasetStore(tmp_path / "root")
    _, items = read_ladnn_batch(new_data_dir / "5.16")
    items[0].lesions = {"Pleural effusion": 1}

    report = import_items(
        items, store, "unknown-lesion", validation_dir=tmp_path / "validation", progress=False
    )

    [(name, reason)] = report.rejected
    assert name == items[0].file_name
    assert "unknown lesion name 'Pleural effusion'" in reason
    assert report.added == [item.file_name for item in items[1:]]


def test_mostly_bad_batch_stops(tmp_path, new_data_dir):
    store = DatasetStore(tmp_path / "root")
    _, good = read_ladnn_batch(new_data_dir / "5.16")
    broken = [_item(f"broken-{index}.png", b"", 0, f"broken-{index}") for index in range(10)]

    with pytest.raises(BatchValidationError) as caught:
        import_items(
            [*good, *broken],
            store,
            "mostly-broken",
            quarantine_dir=tmp_path / "quarantine",
            progress=False,
        )

    assert "rejected_fraction" in str(caught.value)
    assert not store.exists()
    assert not (tmp_path / "quarantine").exists()


# --- the real release and LA-DNN's batches pass ---


@pytest.fixture(scope="module")
def release_copy(tmp_path_factory, imported_release: DatasetStore) -> DatasetStore:
    return copy_dataset(imported_release, tmp_path_factory.mktemp("release-copy"))


@pytest.fixture(scope="module")
def validation_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validation")


def test_release_passes(tmp_path, release_dir, validation_dir):
    result = validate_items(
        read_release(release_dir),
        DatasetStore(tmp_path / "empty"),
        "covid-ct-release",
        validation_dir=validation_dir,
        progress=False,
    )

    assert result.success, result.summary()
    assert result.rejected == []
    assert result.counts["validated"] == 746
    assert {warning["check"] for warning in result.warnings} >= {"small_height"}
    assert (result.directory / RESULT_FILE).is_file()
    assert result.docs_path is not None and result.docs_path.is_file()


@pytest.mark.parametrize("batch", ["5.16", "6.2"])
def test_new_batch_passes_after_release(release_copy, new_data_dir, validation_dir, batch):
    batch_id, items = read_ladnn_batch(new_data_dir / batch)

    result = validate_items(
        items, release_copy, batch_id, validation_dir=validation_dir, progress=False
    )

    assert result.success, result.summary()
    assert result.rejected == []
    assert result.counts["validated"] == len(items)
    assert result.reference_images == 746
    assert "class_balance" in {warning["check"] for warning in result.warnings}


# --- helpers and records ---


def test_hamming_distance_counts_bits():
    values = phash_values(["0000000000000000", "000000000000000f", "ffffffffffffffff"])

    distances = hamming_distances(values, values)

    assert distances[0, 1] == 4
    assert distances[0, 2] == 64
    assert distances[1, 2] == 60
    assert distances[1, 1] == 0


def test_near_duplicate_pairs_skip_missing():
    hashes = pd.Series(
        ["0000000000000000", None, "0000000000000003", "ffffffffffffffff"], dtype="string"
    )

    pairs = near_duplicate_pairs(hashes, 4)

    assert pairs.to_dict("records") == [{"first": 0, "second": 2, "distance": 2}]


def test_version_record_without_validation_ids(tmp_path):
    workspace = Workspace.resolve(tmp_path / "workspace").ensure()
    record = {
        "number": 1,
        "md5": "0123456789abcdef0123456789abcdef.dir",
        "created_at": "2026-01-01T00:00:00+00:00",
        "batch_ids": ["covid-ct-release"],
        "n_images": 746,
        "counts": {"label_0": 397, "label_1": 349},
        "dvc_file": "",
    }
    (workspace.datasets_dir / "versions.json").write_text(json.dumps([record]), encoding="utf-8")

    [version] = list_versions(workspace)

    assert version.validation_ids == []
