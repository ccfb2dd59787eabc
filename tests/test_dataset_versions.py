"""Acceptance run on real data: the release, then LA-DNN's batches 5.16 and 6.2, each imported
with `import_batch` and recorded as a DVC-backed dataset version."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ladnn.data.batches import read_ladnn_batch
from ladnn.data.contributions import read_contribution
from ladnn.data.operations import (
    BatchImport,
    diff_versions,
    find_version,
    import_batch,
    read_version_metadata,
)
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import list_versions
from ladnn.workspace import Workspace

# Import step, version it creates, images, COVID images, negative images.
VERSIONS = [
    ("release", "v1", 746, 349, 397),
    ("5.16", "v2", 755, 349, 406),
    ("6.2", "v3", 790, 384, 406),
]
VERSION_NAMES = [name for _, name, *_ in VERSIONS]


@dataclass
class AcceptanceRun:
    root: Path
    workspace: Workspace
    # Import step name -> the result of `import_batch`.
    imports: dict[str, BatchImport]
    # File name of the release image that was contributed again under another name.
    copied_release_name: str


@pytest.fixture(scope="module")
def run(tmp_path_factory, release_dir: Path, new_data_dir: Path) -> AcceptanceRun:
    """Import the release, 5.16, 6.2, 6.2 again and a renamed release image, once per module."""
    base = tmp_path_factory.mktemp("acceptance")
    root = base / "root"
    root.mkdir()
    workspace = Workspace.resolve(base / "workspace").ensure()
    imports = {}

    release_items = read_release(release_dir)
    imports["release"] = import_batch(
        root, workspace, RELEASE_BATCH_ID, release_items, progress=False
    )
    for step, folder in (("5.16", "5.16"), ("6.2", "6.2"), ("6.2 again", "6.2")):
        batch_id, items = read_ladnn_batch(new_data_dir / folder)
        imports[step] = import_batch(root, workspace, batch_id, items, progress=False)

    original = sorted((release_dir / "CT_COVID").glob("*.png"))[0]
    contributed = base / "contributed"
    contributed.mkdir()
    shutil.copy(original, contributed / "renamed-slice.png")
    batch_id, items = read_contribution(contributed, label=1)
    imports["renamed copy"] = import_batch(root, workspace, batch_id, items, progress=False)

    return AcceptanceRun(root, workspace, imports, f"CT_COVID/{original.name}")


@pytest.fixture(scope="module")
def version_metadata(run: AcceptanceRun) -> dict:
    """Return the metadata of v1, v2 and v3 as read back from the DVC cache."""
    return {
        name: read_version_metadata(run.workspace, find_version(run.workspace, name))
        for name in VERSION_NAMES
    }


# --- one version per batch ---


@pytest.mark.parametrize(("step", "name", "images", "covid", "negative"), VERSIONS)
def test_import_creates_version(run, step, name, images, covid, negative):
    result = run.imports[step]

    assert result.created
    assert result.version.name == name
    assert result.version.n_images == images
    assert result.version.counts["label_1"] == covid
    assert result.version.counts["label_0"] == negative


@pytest.mark.parametrize(("step", "name", "images", "covid", "negative"), VERSIONS)
def test_version_metadata_counts(version_metadata, step, name, images, covid, negative):
    metadata = version_metadata[name]

    assert len(metadata) == images
    assert int((metadata["label"] == 1).sum()) == covid
    assert int((metadata["label"] == 0).sum()) == negative
    assert metadata["image_id"].is_unique


@pytest.mark.parametrize(("step", "added"), [("release", 746), ("5.16", 9), ("6.2", 35)])
def test_import_report_added(run, step, added):
    report = run.imports[step].report

    assert len(report.added) == added
    assert report.rejected == []
    assert report.duplicates == []


def test_versions_listed(run):
    versions = list_versions(run.workspace)

    assert [version.name for version in versions] == VERSION_NAMES
    assert versions[-1].batch_ids == [RELEASE_BATCH_ID, "ladnn-2020-05-16", "ladnn-2020-06-02"]


def test_release_version_official_split(version_metadata):
    splits = version_metadata["v1"]["split"].value_counts()

    assert splits["train"] == 425
    assert splits["val"] == 118
    assert splits["test"] == 203


@pytest.mark.parametrize("name", VERSION_NAMES)
def test_version_patients_one_split(version_metadata, name):
    splits_per_patient = version_metadata[name].groupby("patient_id")["split"].nunique()

    leaking = sorted(splits_per_patient[splits_per_patient > 1].index)

    assert leaking == []


def test_release_rows_keep_split(version_metadata):
    before = version_metadata["v1"].set_index("image_id")["split"]
    after = version_metadata["v3"].set_index("image_id")["split"]

    moved = sorted(image_id for image_id in before.index if after[image_id] != before[image_id])

    assert set(before.index) <= set(after.index)
    assert moved == []


def test_batch_rows_fields(version_metadata):
    metadata = version_metadata["v3"]
    batch_516 = metadata[metadata["batch_id"] == "ladnn-2020-05-16"]
    batch_62 = metadata[metadata["batch_id"] == "ladnn-2020-06-02"]

    assert len(batch_516) == 9
    assert set(batch_516["negative_subtype"]) == {"lung cancer"}
    assert set(batch_516["collected_on"]) == {"2020-05-16"}
    assert len(batch_62) == 35
    assert set(batch_62["source"]) == {"doi:10.1148/radiol.2020200642"}
    assert batch_62["GGO"].isna().all()


# --- imports that change nothing ---


def test_reimport_creates_no_version(run):
    result = run.imports["6.2 again"]

    assert not result.created
    assert result.version.name == "v3"
    assert len(result.report.already_present) == 35
    assert result.report.added == []


def test_renamed_release_image_duplicate(run):
    result = run.imports["renamed copy"]

    assert result.report.duplicates == [("contributed/renamed-slice.png", run.copied_release_name)]
    assert result.report.added == []
    assert not result.created
    assert result.version.name == "v3"


def test_data_folder_matches_latest(run):
    store = DatasetStore(run.root)
    metadata = store.read_metadata()

    on_disk = sorted(path.stem for path in store.images_dir.iterdir())

    assert len(metadata) == 790
    assert on_disk == sorted(metadata["image_id"])


# --- reading versions back ---


def test_diff_v1_v3(run):
    diff = diff_versions(run.workspace, "v1", "v3")
    added_per_batch = diff.added["batch_id"].value_counts().to_dict()

    assert len(diff.added) == 44
    assert len(diff.removed) == 0
    assert len(diff.changed) == 0
    assert added_per_batch == {"ladnn-2020-06-02": 35, "ladnn-2020-05-16": 9}
    assert diff.summary().startswith("v1 -> v3: 44 added, 0 removed, 0 changed")


def test_diff_latest_alias(run):
    diff = diff_versions(run.workspace, "2", "latest")

    assert diff.new.name == "v3"
    assert len(diff.added) == 35


def test_v1_metadata_after_data_moved(run):
    current = DatasetStore(run.root).read_metadata()

    old = read_version_metadata(run.workspace, find_version(run.workspace, "v1"))

    assert len(current) == 790
    assert len(old) == 746
    assert set(old["batch_id"]) == {RELEASE_BATCH_ID}


def test_v1_metadata_from_remote(run, tmp_path):
    """With an empty DVC cache, a version's metadata is read from the workspace remote."""
    remote_only = Workspace.resolve(tmp_path / "workspace").ensure()
    shutil.copytree(run.workspace.dvc_remote, remote_only.dvc_remote, dirs_exist_ok=True)

    old = read_version_metadata(remote_only, find_version(run.workspace, "v1"))

    assert len(old) == 746


def test_find_version_unknown(run):
    with pytest.raises(ValueError) as caught:
        find_version(run.workspace, "v9")

    assert "unknown dataset version 'v9'" in str(caught.value)
    assert "['v1', 'v2', 'v3']" in str(caught.value)
