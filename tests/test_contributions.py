"""Reading contributed batches (a folder or zip with a metadata CSV) and single uploads."""

from __future__ import annotations

import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ladnn.data.contributions import parse_label, read_contribution, read_uploads
from ladnn.data.importer import metadata_problems

# Contributed file name -> index into the real release images of the `real_images` fixture. The
# two `p1-slice-*` files share the patient group `p1-slice` when no patient_id is given.
CONTRIBUTED_NAMES = {
    "p1-slice-1.png": 0,
    "p1-slice-2.png": 1,
    "case7_3.jpg": 2,
    "scan.jpg": 3,
}


@pytest.fixture(scope="module")
def real_images(release_dir: Path) -> list[Path]:
    """Return four release images: two COVID PNGs and two negative JPEGs."""
    covid = sorted((release_dir / "CT_COVID").glob("*.png"))[:2]
    negative = sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[:2]
    return covid + negative


@pytest.fixture
def batch_folder(tmp_path: Path, real_images: list[Path]) -> Path:
    """Build the folder `hospital-a/` of four real images under contributed names, without a CSV."""
    folder = tmp_path / "hospital-a"
    folder.mkdir()
    for name, index in CONTRIBUTED_NAMES.items():
        shutil.copy(real_images[index], folder / name)
    return folder


def _write_csv(folder: Path, text: str, encoding: str = "utf-8") -> Path:
    path = folder / "metadata.csv"
    path.write_bytes(text.encode(encoding))
    return path


def _items_by_name(items) -> dict:
    return {Path(item.file_name).name: item for item in items}


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


FULL_CSV = (
    "file_name,label,GGO,consolidation(Csld),Aibr,patient_id,source,negative_subtype,collected_on,caption\n"
    "p1-slice-1.png,covid,1,0,,,doi:10.1101/2020.02.25.20021568,,2021-03-02,bilateral GGO\n"
    "p1-slice-2.png,1,0,1,1,,,,5.14,\n"
    "case7_3.jpg,negative,,,,H-17,,lung cancer,,\n"
    "scan.jpg,0,,,,,,normal,,\n"
)


@pytest.fixture
def full_batch(batch_folder: Path):
    _write_csv(batch_folder, FULL_CSV)
    return read_contribution(batch_folder)


# --- a folder with a CSV in the documented schema ---


def test_contribution_batch_id(full_batch):
    batch_id, _ = full_batch

    assert batch_id == "contrib-hospital-a"


def test_contribution_item_count(full_batch):
    _, items = full_batch

    assert len(items) == 4


@pytest.mark.parametrize(
    ("name", "label"),
    [("p1-slice-1.png", 1), ("p1-slice-2.png", 1), ("case7_3.jpg", 0), ("scan.jpg", 0)],
)
def test_contribution_labels(full_batch, name, label):
    _, items = full_batch

    assert _items_by_name(items)[name].label == label


@pytest.mark.parametrize(
    ("name", "lesions"),
    [
        ("p1-slice-1.png", {"GGO": 1, "Csld": 0}),
        ("p1-slice-2.png", {"GGO": 0, "Csld": 1, "AirBr": 1}),
        ("case7_3.jpg", {}),
    ],
)
def test_contribution_lesions(full_batch, name, lesions):
    _, items = full_batch

    assert _items_by_name(items)[name].lesions == lesions


@pytest.mark.parametrize(
    ("name", "patient_id"),
    [
        ("p1-slice-1.png", "contrib-hospital-a:p1-slice"),
        ("p1-slice-2.png", "contrib-hospital-a:p1-slice"),
        ("case7_3.jpg", "H-17"),
        ("scan.jpg", "contrib-hospital-a:scan"),
    ],
)
def test_contribution_patient_ids(full_batch, name, patient_id):
    _, items = full_batch

    assert _items_by_name(items)[name].patient_id == patient_id


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("p1-slice-1.png", "doi:10.1101/2020.02.25.20021568"),
        ("p1-slice-2.png", "contribution hospital-a"),
    ],
)
def test_contribution_sources(full_batch, name, source):
    _, items = full_batch

    assert _items_by_name(items)[name].source == source


def test_contribution_source_option(batch_folder):
    _write_csv(batch_folder, FULL_CSV)

    _, items = read_contribution(batch_folder, source="doi:10.1234/abcd")
    by_name = _items_by_name(items)

    assert by_name["p1-slice-2.png"].source == "doi:10.1234/abcd"
    assert by_name["p1-slice-1.png"].source == "doi:10.1101/2020.02.25.20021568"


def test_contribution_collected_on(full_batch):
    _, items = full_batch
    by_name = _items_by_name(items)

    assert by_name["p1-slice-1.png"].collected_on == "2021-03-02"
    assert by_name["p1-slice-2.png"].collected_on == "2020-05-14"


def test_contribution_collected_on_default(batch_folder):
    _write_csv(batch_folder, FULL_CSV)
    before = _today()

    _, items = read_contribution(batch_folder)
    collected_on = _items_by_name(items)["case7_3.jpg"].collected_on

    assert collected_on in {before, _today()}


def test_contribution_negative_subtypes(full_batch):
    _, items = full_batch
    by_name = _items_by_name(items)

    assert by_name["case7_3.jpg"].negative_subtype == "lung cancer"
    assert by_name["scan.jpg"].negative_subtype == "normal"
    assert by_name["p1-slice-1.png"].negative_subtype is None


def test_contribution_caption(full_batch):
    _, items = full_batch
    by_name = _items_by_name(items)

    assert by_name["p1-slice-1.png"].caption == "bilateral GGO"
    assert by_name["p1-slice-2.png"].caption is None


def test_contribution_file_names(full_batch):
    _, items = full_batch

    assert sorted(item.file_name for item in items) == sorted(
        f"hospital-a/{name}" for name in CONTRIBUTED_NAMES
    )


def test_contribution_batch_id_option(batch_folder):
    _write_csv(batch_folder, FULL_CSV)

    batch_id, items = read_contribution(batch_folder, batch_id="hospital-a-2026-11")
    by_name = _items_by_name(items)

    assert batch_id == "hospital-a-2026-11"
    assert by_name["scan.jpg"].patient_id == "hospital-a-2026-11:scan"


# --- invalid values ---


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("negative_subtype", "cancer", "invalid negative_subtype 'cancer'"),
        ("label", "maybe", "invalid label 'maybe'"),
        ("GGO", "2", "invalid value '2' of lesion GGO"),
    ],
)
def test_contribution_invalid_value_kept_for_the_gate(batch_folder, column, value, message):
    """A value that cannot be read is kept as given; the gate then rejects that row alone."""
    _write_csv(batch_folder, f"file_name,{column}\nscan.jpg,{value}\np1-slice-1.png,\n")

    _, items = read_contribution(batch_folder, label=0)
    by_name = _items_by_name(items)

    assert len(items) == 4
    [problem] = metadata_problems(by_name["scan.jpg"])
    assert message in problem
    assert metadata_problems(by_name["p1-slice-1.png"]) == []


def test_contribution_invalid_date_kept_for_the_gate(batch_folder):
    _write_csv(batch_folder, "file_name,collected_on\nscan.jpg,14/05/2020\n")

    _, items = read_contribution(batch_folder, label=0)

    assert _items_by_name(items)["scan.jpg"].collected_on == "14/05/2020"


def test_contribution_lesion_list(batch_folder):
    _write_csv(
        batch_folder,
        "file_name,label,lesions\n"
        "p1-slice-1.png,1,GGO; Aibr\n"
        "p1-slice-2.png,1,none\n"
        "case7_3.jpg,0,\n"
        "scan.jpg,1,GGO|Pleural effusion\n",
    )

    _, items = read_contribution(batch_folder)
    by_name = _items_by_name(items)

    assert by_name["p1-slice-1.png"].lesions == {
        "GGO": 1,
        "Csld": 0,
        "CrPa": 0,
        "AirBr": 1,
        "InSepThi": 0,
    }
    assert set(by_name["p1-slice-2.png"].lesions.values()) == {0}
    assert by_name["case7_3.jpg"].lesions == {}
    [problem] = metadata_problems(by_name["scan.jpg"])
    assert "unknown lesion name 'Pleural effusion'" in problem


def test_contribution_unknown_column_stops(batch_folder):
    csv_path = _write_csv(batch_folder, "file_name,label,scanner\nscan.jpg,0,GE Revolution\n")

    with pytest.raises(ValueError) as caught:
        read_contribution(batch_folder, label=1)

    assert str(csv_path) in str(caught.value)
    assert "unknown column(s) ['scanner']" in str(caught.value)


def test_contribution_exact_duplicates_merged(batch_folder):
    _write_csv(
        batch_folder,
        "file_name,label,GGO\np1-slice-1.png,1,1\np1-slice-1.png,1,1\nscan.jpg,0,\n",
    )

    _, items = read_contribution(batch_folder, label=0)
    names = [item.file_name for item in items]

    assert len(items) == 4
    assert names.count("hospital-a/p1-slice-1.png") == 1
    assert _items_by_name(items)["p1-slice-1.png"].lesions == {"GGO": 1}


def test_contribution_conflicting_duplicates(batch_folder):
    _write_csv(
        batch_folder,
        "file_name,label,GGO\np1-slice-1.png,1,1\np1-slice-1.png,1,0\n",
    )

    with pytest.raises(ValueError) as caught:
        read_contribution(batch_folder, label=0)

    assert "conflicting rows" in str(caught.value)
    assert "p1-slice-1.png" in str(caught.value)


def test_contribution_missing_file_name_column(batch_folder):
    csv_path = _write_csv(batch_folder, "image,label\nscan.jpg,0\n")

    with pytest.raises(ValueError) as caught:
        read_contribution(batch_folder)

    assert str(csv_path) in str(caught.value)
    assert "missing required column 'file_name'" in str(caught.value)


def test_contribution_unlabelled_images_listed(batch_folder):
    _write_csv(batch_folder, "file_name,label\np1-slice-1.png,1\np1-slice-2.png,1\n")

    with pytest.raises(ValueError) as caught:
        read_contribution(batch_folder)

    assert "2 image(s) have no label" in str(caught.value)
    assert "case7_3.jpg" in str(caught.value)
    assert "scan.jpg" in str(caught.value)
    assert "--label" in str(caught.value)


def test_contribution_batch_label_fills(batch_folder):
    _write_csv(batch_folder, "file_name,label,GGO\np1-slice-1.png,1,1\np1-slice-2.png,1,0\n")

    _, items = read_contribution(batch_folder, label=0)
    by_name = _items_by_name(items)

    assert by_name["case7_3.jpg"].label == 0
    assert by_name["scan.jpg"].label == 0
    assert by_name["scan.jpg"].lesions == {}
    assert by_name["p1-slice-1.png"].label == 1


def test_contribution_without_csv(batch_folder):
    _, items = read_contribution(batch_folder, label=1)

    assert len(items) == 4
    assert {item.label for item in items} == {1}


def test_contribution_explicit_metadata(batch_folder, tmp_path):
    elsewhere = tmp_path / "labels.csv"
    elsewhere.write_text("file_name,label\nscan.jpg,covid\n", encoding="utf-8")

    _, items = read_contribution(batch_folder, metadata=elsewhere, label=0)

    assert _items_by_name(items)["scan.jpg"].label == 1


def test_contribution_two_csvs_rejected(batch_folder):
    """Two CSVs beside the images must not be skipped silently in favour of the batch label."""
    _write_csv(batch_folder, "file_name,label,GGO\np1-slice-1.png,covid,1\n")
    (batch_folder / "extra.csv").write_text("file_name,label\np1-slice-1.png,covid\n", "utf-8")

    with pytest.raises(ValueError) as caught:
        read_contribution(batch_folder, label=0)

    assert "metadata.csv" in str(caught.value)
    assert "extra.csv" in str(caught.value)
    assert "--metadata" in str(caught.value)


def test_contribution_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()

    with pytest.raises(ValueError) as caught:
        read_contribution(folder, label=0)

    assert "no image files found" in str(caught.value)


# --- CSV text encodings ---


@pytest.mark.parametrize(
    ("encoding", "caption"),
    [
        ("cp1252", "Hôpital Saint-Éloi: opacité en verre dépoli, ½ poumon droit"),
        ("gbk", "双肺多发磨玻璃影，以胸膜下分布为主"),
        ("utf-8-sig", "Größere Konsolidierung im Unterlappen"),
    ],
)
def test_contribution_csv_encoding(batch_folder, encoding, caption):
    _write_csv(batch_folder, f'file_name,label,caption\nscan.jpg,covid,"{caption}"\n', encoding)

    _, items = read_contribution(batch_folder, label=0)
    item = _items_by_name(items)["scan.jpg"]

    assert item.caption == caption
    assert item.label == 1


# --- zip archives ---


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_contribution_zip_rows(tmp_path, real_images):
    members = {
        "scans/p1-slice-1.png": real_images[0].read_bytes(),
        "scans/scan.jpg": real_images[3].read_bytes(),
    }
    archive = _write_zip(tmp_path / "slices.zip", members)
    (tmp_path / "slices.csv").write_text(
        "file_name,label,GGO\nscans/p1-slice-1.png,covid,1\nscan.jpg,negative,\n",
        encoding="utf-8",
    )

    batch_id, items = read_contribution(archive)
    by_name = _items_by_name(items)

    assert batch_id == "contrib-slices"
    assert sorted(item.file_name for item in items) == [
        "slices.zip/scans/p1-slice-1.png",
        "slices.zip/scans/scan.jpg",
    ]
    assert by_name["p1-slice-1.png"].lesions == {"GGO": 1}
    assert by_name["scan.jpg"].label == 0
    assert by_name["p1-slice-1.png"].read_bytes() == real_images[0].read_bytes()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil.png", "outside the archive root"),
        ("scans/../../evil.png", "outside the archive root"),
        ("/etc/evil.png", "outside the archive root"),
        ("inner.zip", "nested archive 'inner.zip'"),
        ("scans/more.tar.gz", "nested archive"),
    ],
)
def test_contribution_zip_unsafe_member(tmp_path, real_images, member, message):
    members = {"scans/ok.png": real_images[0].read_bytes(), member: real_images[1].read_bytes()}
    archive = _write_zip(tmp_path / "slices.zip", members)

    with pytest.raises(ValueError) as caught:
        read_contribution(archive, label=1)

    assert message in str(caught.value)
    assert "slices.zip" in str(caught.value)


def test_contribution_zip_not_readable(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(ValueError) as caught:
        read_contribution(archive, label=1)

    assert "not a readable zip archive" in str(caught.value)


# --- labels and single uploads ---


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("1", 1),
        ("0", 0),
        ("covid", 1),
        ("COVID-19", 1),
        (" positive ", 1),
        ("negative", 0),
        ("Non-COVID", 0),
    ],
)
def test_parse_label_table(value, label):
    assert parse_label(value, "--label") == label


def test_parse_label_invalid():
    with pytest.raises(ValueError) as caught:
        parse_label("pneumonia", "--label")

    assert "--label: invalid label 'pneumonia'" in str(caught.value)


def test_uploads_own_patients(tmp_path, real_images):
    paths = [shutil.copy(path, tmp_path / path.name) for path in real_images[:2]]

    batch_id, items = read_uploads([Path(path) for path in paths], label=1)
    patients = [item.patient_id for item in items]

    assert batch_id.startswith("upload-")
    assert len(items) == 2
    assert len(set(patients)) == 2
    for patient_id in patients:
        assert patient_id.startswith("upload:"), patient_id


def test_uploads_shared_patient(tmp_path, real_images):
    paths = [Path(shutil.copy(path, tmp_path / path.name)) for path in real_images[:2]]

    _, items = read_uploads(paths, label=0, patient_id="H-17", source="doi:10.1234/abcd")

    assert {item.patient_id for item in items} == {"H-17"}
    assert {item.source for item in items} == {"doi:10.1234/abcd"}
    assert {item.label for item in items} == {0}


def test_uploads_fields(tmp_path, real_images):
    path = Path(shutil.copy(real_images[0], tmp_path / "upload.png"))
    before = _today()

    batch_id, [item] = read_uploads([path], label=1, batch_id="upload-test")

    assert batch_id == "upload-test"
    assert item.file_name == "upload.png"
    assert item.source == "upload"
    assert item.lesions == {}
    assert item.read_bytes() == real_images[0].read_bytes()
    assert item.collected_on in {before, _today()}


def test_uploads_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        read_uploads([tmp_path / "absent.png"], label=1)

    assert "absent.png" in str(caught.value)
