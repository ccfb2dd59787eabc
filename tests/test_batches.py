"""Reading LA-DNN's dated batches: class zips matched against the metadata CSVs."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest

from ladnn.data.batches import find_metadata_files, read_ladnn_batch, zip_class
from ladnn.data.release import read_label_file

METADATA_HEADER = "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi,Collection date,Sources\n"
SOURCE_516 = "https://wiki.cancerimagingarchive.net/display/Public/CPTAC-LSCC"


@pytest.fixture(scope="module")
def batch_516(new_data_dir: Path):
    return read_ladnn_batch(new_data_dir / "5.16")


@pytest.fixture(scope="module")
def batch_62(new_data_dir: Path):
    return read_ladnn_batch(new_data_dir / "6.2")


def _zip_members(archive: Path, count: int) -> dict[str, bytes]:
    """Return the base name and bytes of the first `count` images of a real class zip."""
    with zipfile.ZipFile(archive) as opened:
        names = sorted(name for name in opened.namelist() if name.endswith(".png"))[:count]
        return {Path(name).name: opened.read(name) for name in names}


def _build_batch(folder: Path, zip_name: str, images: dict[str, bytes], csv_text: str) -> Path:
    """Write a dated batch folder: one class zip of `images` and one metadata CSV beside it."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / zip_name, "w") as archive:
        for name, data in images.items():
            archive.writestr(f"{Path(zip_name).stem}/{name}", data)
    (folder / "meta.csv").write_text(csv_text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def negative_images(new_data_dir: Path) -> dict[str, bytes]:
    return _zip_members(new_data_dir / "5.16" / "5.16_nocovidct.zip", 2)


@pytest.fixture(scope="module")
def covid_images(new_data_dir: Path) -> dict[str, bytes]:
    return _zip_members(new_data_dir / "6.2" / "6.2_covidct.zip", 2)


# --- new-data/5.16: nine lung cancer slices listed in the metadata ---


def test_batch_516_id(batch_516):
    batch_id, _ = batch_516

    assert batch_id == "ladnn-2020-05-16"


def test_batch_516_labels(batch_516):
    _, items = batch_516

    assert len(items) == 9
    assert {item.label for item in items} == {0}


def test_batch_516_negative_subtype(batch_516):
    _, items = batch_516

    assert {item.negative_subtype for item in items} == {"lung cancer"}


def test_batch_516_collected_on(batch_516):
    _, items = batch_516

    assert {item.collected_on for item in items} == {"2020-05-16"}


def test_batch_516_source_without_fragment(batch_516):
    _, items = batch_516

    assert {item.source for item in items} == {SOURCE_516}


def test_batch_516_lesions_unknown(batch_516):
    _, items = batch_516

    for item in items:
        assert item.lesions == {}, item.file_name


def test_batch_516_patients_by_series(batch_516):
    _, items = batch_516
    prefix = "ladnn:Lungsquamouscellcarcinoma_CPTAC-LSCC_"

    slices_per_patient = Counter(item.patient_id for item in items)

    assert len(slices_per_patient) == 5
    assert slices_per_patient == {
        f"{prefix}00497": 3,
        f"{prefix}00839": 2,
        f"{prefix}01194": 1,
        f"{prefix}01846": 1,
        f"{prefix}02283": 2,
    }


def test_batch_516_file_names(batch_516):
    _, items = batch_516

    for item in items:
        assert item.file_name.startswith("5.16_nocovidct.zip/5.16_nocovidct/"), item.file_name


def test_batch_516_bytes_readable(batch_516):
    _, items = batch_516

    data = items[0].read_bytes()

    assert data.startswith(b"\x89PNG")


# --- new-data/6.2: 35 COVID slices listed in no metadata file ---


def test_batch_62_id(batch_62):
    batch_id, _ = batch_62

    assert batch_id == "ladnn-2020-06-02"


def test_batch_62_labels(batch_62):
    _, items = batch_62

    assert len(items) == 35
    assert {item.label for item in items} == {1}


def test_batch_62_lesions_unknown(batch_62):
    _, items = batch_62

    for item in items:
        assert item.lesions == {}, item.file_name


def test_batch_62_source_from_doi(batch_62):
    _, items = batch_62

    assert {item.source for item in items} == {"doi:10.1148/radiol.2020200642"}


def test_batch_62_folder_date(batch_62):
    _, items = batch_62

    assert {item.collected_on for item in items} == {"2020-06-02"}


def test_batch_62_one_publication_patient(batch_62):
    _, items = batch_62

    assert {item.patient_id for item in items} == {"ladnn:10.1148.radiol.2020200642"}


def test_batch_62_no_negative_subtype(batch_62):
    _, items = batch_62

    assert {item.negative_subtype for item in items} == {None}


def test_batch_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        read_ladnn_batch(tmp_path / "5.30")

    assert "5.30" in str(caught.value)


def test_batch_without_zip(tmp_path):
    folder = tmp_path / "5.30"
    folder.mkdir()

    with pytest.raises(ValueError) as caught:
        read_ladnn_batch(folder)

    assert "no class zip archive" in str(caught.value)


# --- class of a zip from its name ---


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("5.16_nocovidct.zip", 0),
        ("6.2_covidct.zip", 1),
        ("new-data/5.14/5.14_NOCOVIDCT.zip", 0),
        ("5.18_noncovid.zip", 0),
        ("Non-COVID-slices.zip", 0),
        ("5.13_CovidCT.zip", 1),
    ],
)
def test_zip_class_table(name, label):
    assert zip_class(name) == label


def test_zip_class_unknown_name():
    with pytest.raises(ValueError) as caught:
        zip_class("5.16_slices.zip")

    assert "5.16_slices.zip" in str(caught.value)
    assert "cannot tell the class" in str(caught.value)


# --- metadata that contradicts or refines the batch ---


def test_batch_metadata_opposite_class(tmp_path, negative_images):
    rows = "".join(f"{name},,,,,,,5.20,\n" for name in negative_images)
    folder = _build_batch(
        tmp_path / "5.20", "5.20_covidct.zip", negative_images, METADATA_HEADER + rows
    )
    first_name = sorted(negative_images)[0]

    with pytest.raises(ValueError) as caught:
        read_ladnn_batch(folder)

    assert first_name in str(caught.value)
    assert "5.20_covidct.zip" in str(caught.value)
    assert "labels it negative" in str(caught.value)


def test_batch_metadata_lesion_spellings(tmp_path, covid_images):
    listed, unlisted = sorted(covid_images)
    row = (
        f"{listed},CVD19,GGO,,,Aibr,InSep,5.20,https://doi.org/10.1148/radiol.2020200642#figure-1\n"
    )
    folder = _build_batch(
        tmp_path / "5.21", "5.21_covidct.zip", covid_images, METADATA_HEADER + row
    )

    batch_id, items = read_ladnn_batch(folder)
    by_name = {Path(item.file_name).name: item for item in items}

    assert batch_id == "ladnn-2020-05-21"
    assert by_name[listed].lesions == {"GGO": 1, "Csld": 0, "CrPa": 0, "AirBr": 1, "InSepThi": 1}
    assert by_name[listed].collected_on == "2020-05-20"
    assert by_name[listed].source == "https://doi.org/10.1148/radiol.2020200642"
    assert by_name[unlisted].lesions == {}
    assert by_name[unlisted].collected_on == "2020-05-21"


def test_batch_explicit_metadata_list(tmp_path, covid_images):
    """An explicit metadata list replaces the CSVs found beside the batch."""
    listed = sorted(covid_images)[0]
    row = f"{listed},CVD19,GGO,,,,,5.20,\n"
    folder = _build_batch(
        tmp_path / "5.22", "5.22_covidct.zip", covid_images, METADATA_HEADER + row
    )

    _, items = read_ladnn_batch(folder, metadata=[])

    for item in items:
        assert item.lesions == {}, item.file_name


@pytest.mark.parametrize(
    "lesion_header",
    [
        "AirBr,InSepThi",
        "Aibr,InSep",
        "air bronchograms(AirBr),interlobular septal thickening(InSepThi)",
    ],
)
def test_label_file_cell_spellings(tmp_path, lesion_header):
    path = tmp_path / "meta.csv"
    path.write_text(
        f"imgname,CVD19,GGO,Csld,CrPa,{lesion_header}\n"
        "a.png,CVD19,,,,Aibr,InSep\n"
        "b.png,CVD19,GGO,,,AirBr,\n",
        encoding="utf-8",
    )

    rows = {row.file_name: row for row in read_label_file(path)}

    assert rows["a.png"].lesions == {"AirBr": 1, "InSepThi": 1}
    assert rows["b.png"].lesions == {"GGO": 1, "AirBr": 1}
    assert rows["a.png"].covid


@pytest.mark.parametrize(
    ("column_cells", "wrong_cell"),
    [
        (",,,GGO,", "GGO"),
        (",,,,Aibr", "Aibr"),
        ("Csld,,,,", "Csld"),
    ],
)
def test_label_file_cell_other_lesion(tmp_path, column_cells, wrong_cell):
    path = tmp_path / "meta.csv"
    path.write_text(
        f"imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\na.png,CVD19,{column_cells}\n",
        encoding="utf-8",
    )

    with pytest.raises(ValueError) as caught:
        read_label_file(path)

    assert repr(wrong_cell) in str(caught.value)
    assert "meta.csv line 2" in str(caught.value)


# --- metadata files beside a batch ---


def test_find_metadata_516(new_data_dir):
    found = find_metadata_files(new_data_dir / "5.16")

    assert [path.name for path in found] == [
        "New_COVIDCT_meta(update to 5.18).csv",
        "New_NonCOVIDCT_meta(update to 5.18).csv",
    ]


def test_find_metadata_from_zip(new_data_dir):
    found = find_metadata_files(new_data_dir / "5.16" / "5.16_nocovidct.zip")

    assert len(found) == 2


def test_find_metadata_skips_other_csv(tmp_path):
    batch = tmp_path / "5.20"
    batch.mkdir()
    (batch / "notes.csv").write_text("file_name,label\na.png,1\n", encoding="utf-8")
    (batch / "meta.csv").write_text("\ufeffimgname,CVD19\na.png,CVD19\n", encoding="utf-8")

    found = find_metadata_files(batch)

    assert [path.name for path in found] == ["meta.csv"]
