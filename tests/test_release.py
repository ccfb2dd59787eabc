"""Reading the COVID-CT release with LA-DNN's official split, lesion labels and patients."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ladnn.data.lesions import LESIONS, UnknownLesionError
from ladnn.data.release import read_label_file, read_release

SPLIT_HEADER = "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\n"


@pytest.fixture(scope="module")
def release_items(release_dir: Path):
    return read_release(release_dir)


def _png_image(folder: Path, index: int) -> Path:
    return sorted(path for path in folder.iterdir() if path.suffix == ".png")[index]


@pytest.fixture
def fake_release(tmp_path: Path, release_dir: Path) -> Path:
    """Build a release of three real images: COVID in train and test, negative in val."""
    root = tmp_path / "release"
    labels = root / "lesion-labels"
    for folder in ("CT_COVID", "CT_NonCOVID", "lesion-labels"):
        (root / folder).mkdir(parents=True)
    covid = [_png_image(release_dir / "CT_COVID", index) for index in (0, -1)]
    negative = _png_image(release_dir / "CT_NonCOVID", 0)
    for path in covid:
        shutil.copy(path, root / "CT_COVID" / path.name)
    shutil.copy(negative, root / "CT_NonCOVID" / negative.name)

    # The metadata file maps every COVID image of the release to its patient, so it is copied as is.
    meta_info = "COVID-CT-MetaInfo_new.csv"
    shutil.copy(release_dir / "lesion-labels" / meta_info, labels / meta_info)
    split_rows = {
        "train_meta.csv": f"{covid[0].name},CVD19,GGO,,,,\n",
        "val_meta.csv": f"{negative.name},,,,,,\n",
        "test_meta.csv": f"{covid[1].name},CVD19,,,,,\n",
    }
    for file_name, row in split_rows.items():
        (labels / file_name).write_text(SPLIT_HEADER + row, encoding="utf-8")
    return root


def test_release_item_count(release_items):
    assert len(release_items) == 746


def test_release_label_counts(release_items):
    labels = Counter(item.label for item in release_items)

    assert labels[1] == 349
    assert labels[0] == 397


def test_release_split_counts(release_items):
    splits = Counter(item.split for item in release_items)

    assert splits["train"] == 425
    assert splits["val"] == 118
    assert splits["test"] == 203
    assert sum(splits.values()) == 746


def test_release_test_split_labels(release_items):
    test_labels = Counter(item.label for item in release_items if item.split == "test")

    assert test_labels[1] == 98
    assert test_labels[0] == 105


def test_release_patients_in_one_split(release_items):
    splits_of_patient = defaultdict(set)
    for item in release_items:
        splits_of_patient[item.patient_id].add(item.split)

    leaking = {patient: splits for patient, splits in splits_of_patient.items() if len(splits) > 1}
    assert leaking == {}


def test_release_covid_patients_named(release_items):
    covid = [item for item in release_items if item.label == 1]

    assert len(covid) == 349
    for item in covid:
        assert item.patient_id.startswith("covid-ct:Patient"), item.file_name


def test_release_negative_lesions_unknown(release_items):
    for item in release_items:
        if item.label == 0:
            assert item.lesions == {}, item.file_name


def test_release_covid_lesions_complete(release_items):
    coded = [item for item in release_items if item.label == 1 and item.lesions]

    assert len(coded) > 0
    for item in coded:
        assert set(item.lesions) == set(LESIONS), item.file_name
        assert set(item.lesions.values()) <= {0, 1}, item.file_name
        assert sum(item.lesions.values()) >= 1, item.file_name


def test_release_lesion_values_from_split(release_items):
    """The first train image is listed with only `Csld` in train_meta.csv."""
    name = "CT_COVID/2020.01.24.919183-p27-132.png"
    item = next(item for item in release_items if item.file_name == name)

    assert item.lesions == {"GGO": 0, "Csld": 1, "CrPa": 0, "AirBr": 0, "InSepThi": 0}
    assert item.split == "train"
    assert item.patient_id == "covid-ct:Patient 1"


def test_release_file_names_prefixed(release_items):
    for item in release_items:
        folder = item.file_name.split("/", 1)[0]
        assert folder == ("CT_COVID" if item.label == 1 else "CT_NonCOVID"), item.file_name


def test_release_missing_folder(tmp_path):
    (tmp_path / "CT_COVID").mkdir()

    with pytest.raises(FileNotFoundError) as caught:
        read_release(tmp_path)

    assert "CT_NonCOVID" in str(caught.value)


def test_fake_release_reads(fake_release):
    items = read_release(fake_release)
    by_split = {item.split: item for item in items}

    assert len(items) == 3
    assert sorted(by_split) == ["test", "train", "val"]
    assert by_split["train"].lesions == {"GGO": 1, "Csld": 0, "CrPa": 0, "AirBr": 0, "InSepThi": 0}
    assert by_split["test"].lesions == {}
    assert by_split["val"].label == 0
    assert by_split["val"].lesions == {}


def test_fake_release_unknown_lesion(fake_release):
    path = fake_release / "lesion-labels" / "train_meta.csv"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("InSepThi", "pleural effusion", 1), encoding="utf-8")

    with pytest.raises(UnknownLesionError) as caught:
        read_release(fake_release)

    assert "pleural effusion" in str(caught.value)
    assert "train_meta.csv" in str(caught.value)


def test_fake_release_unlisted_image(fake_release, release_dir):
    extra = _png_image(release_dir / "CT_NonCOVID", 1)
    shutil.copy(extra, fake_release / "CT_NonCOVID" / extra.name)

    with pytest.raises(ValueError) as caught:
        read_release(fake_release)

    assert extra.name in str(caught.value)
    assert "not listed" in str(caught.value)


def test_label_file_header_only(tmp_path):
    """A split file with the right header and no rows must not be reported as a bad header."""
    path = tmp_path / "val_meta.csv"
    path.write_text(SPLIT_HEADER, encoding="utf-8")

    try:
        rows = read_label_file(path)
    except ValueError as err:
        assert "expected a first column 'imgname'" not in str(err)
    else:
        assert rows == []
