"""The dashboard's plain functions (users, stores, reports, uploads) on a real small workspace."""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dashboard_workspace import BROKEN_FILE_NAME, PASSWORDS, DashboardWorkspace, shared_workspace
from typer.testing import CliRunner

from dashboards import auth, data, orchestration, scoring, uploads
from ladnn import cli
from ladnn.data.contributions import read_contribution
from ladnn.data.images import ImageDecodeError
from ladnn.data.lesions import LESIONS
from ladnn.data.store import DatasetStore
from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace

COVID_SLICE = "CT_COVID/2020.01.24.919183-p27-132.png"
NEGATIVE_SLICE = "CT_NonCOVID/0.jpg"


@pytest.fixture(scope="module")
def built(tmp_path_factory, release_dir: Path) -> DashboardWorkspace:
    return shared_workspace(tmp_path_factory, release_dir)


@pytest.fixture(scope="module")
def space(built: DashboardWorkspace) -> Workspace:
    return Workspace.resolve(built.workspace)


# Users and passwords


def test_password_hash_verifies_and_rejects():
    record = auth.hash_password("correct horse battery")
    assert auth.verify_password("correct horse battery", record)
    assert not auth.verify_password("correct horse batterY", record)
    assert not auth.verify_password("", record)
    assert len(bytes.fromhex(record["salt"])) == auth.SALT_BYTES
    assert len(bytes.fromhex(record["hash"])) == auth.HASH_BYTES


def test_password_hash_uses_fresh_salt():
    first = auth.hash_password("same password")
    second = auth.hash_password("same password")
    assert first["salt"] != second["salt"]
    assert first["hash"] != second["hash"]


def test_password_hash_rejects_malformed_record():
    record = auth.hash_password("some password")
    assert not auth.verify_password("some password", {**record, "algorithm": "md5"})
    assert not auth.verify_password("some password", {**record, "salt": "not hex"})
    assert not auth.verify_password("some password", {key: record[key] for key in ("hash",)})


def test_users_file_stores_no_password(tmp_path: Path):
    path = tmp_path / "users.yaml"
    auth.add_user(path, "rita", "reviewer", "rita-secret-1")
    text = path.read_text()
    assert "rita-secret-1" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = yaml.safe_load(text)["users"]["rita"]
    assert stored["role"] == "reviewer"
    assert set(stored) == {"role", "algorithm", "n", "r", "p", "salt", "hash"}


def test_authenticate_checks_name_and_password(tmp_path: Path):
    path = tmp_path / "users.yaml"
    auth.add_user(path, "rita", "reviewer", "rita-secret-1")
    auth.add_user(path, "ana", "analyst", "ana-secret-12")
    assert auth.authenticate(path, "rita", "rita-secret-1") == auth.User("rita", "reviewer")
    assert auth.authenticate(path, "ana", "ana-secret-12") == auth.User("ana", "analyst")
    assert auth.authenticate(path, "rita", "ana-secret-12") is None
    assert auth.authenticate(path, "nobody", "rita-secret-1") is None


def test_add_user_requires_replace_for_existing(tmp_path: Path):
    path = tmp_path / "users.yaml"
    auth.add_user(path, "rita", "reviewer", "first-password")
    with pytest.raises(auth.UsersFileError, match="already exists"):
        auth.add_user(path, "rita", "analyst", "second-password")
    assert auth.add_user(path, "rita", "analyst", "second-password", replace=True)
    assert auth.authenticate(path, "rita", "second-password") == auth.User("rita", "analyst")
    assert auth.authenticate(path, "rita", "first-password") is None


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("rita", "admin", "long-enough", "invalid role"),
        ("rita smith", "reviewer", "long-enough", "invalid user name"),
        ("rita", "reviewer", "short", "at least"),
    ],
)
def test_add_user_rejects_invalid_entries(tmp_path, name, role, password, message):
    with pytest.raises(auth.UsersFileError, match=message):
        auth.add_user(tmp_path / "users.yaml", name, role, password)


def test_users_file_with_unknown_role_is_invalid(tmp_path: Path):
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  rita:\n    role: admin\n")
    with pytest.raises(auth.UsersFileError, match="needs a role"):
        auth.load_users(path)


def test_users_file_path_follows_environment(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(auth.USERS_ENV, raising=False)
    assert auth.users_file_path(tmp_path) == tmp_path / "dashboard-users.yaml"
    monkeypatch.setenv(auth.USERS_ENV, str(tmp_path / "elsewhere.yaml"))
    assert auth.users_file_path(tmp_path) == tmp_path / "elsewhere.yaml"


def test_cli_add_user_reads_hidden_password(tmp_path: Path, monkeypatch):
    # The CLI sets these for its process; monkeypatch restores them after the test.
    for name in ("LADNN_WORKSPACE", "PREFECT_HOME", auth.USERS_ENV):
        monkeypatch.delenv(name, raising=False)
    workspace = tmp_path / "workspace"
    command = ["--workspace", str(workspace), "dashboard", "add-user", "rita", "--role", "reviewer"]
    result = CliRunner().invoke(cli.app, command, input="rita-secret-1\nrita-secret-1\n")
    assert result.exit_code == 0, result.output
    assert "rita-secret-1" not in result.output
    users_file = workspace / "dashboard-users.yaml"
    assert auth.authenticate(users_file, "rita", "rita-secret-1") == auth.User("rita", "reviewer")

    again = CliRunner().invoke(cli.app, command, input="other-secret\nother-secret\n")
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert auth.authenticate(users_file, "rita", "rita-secret-1") is not None


def test_cli_add_user_rejects_unknown_role(tmp_path: Path, monkeypatch):
    for name in ("LADNN_WORKSPACE", "PREFECT_HOME", auth.USERS_ENV):
        monkeypatch.delenv(name, raising=False)
    command = ["--workspace", str(tmp_path), "dashboard", "add-user", "rita", "--role", "admin"]
    result = CliRunner().invoke(cli.app, command, input="rita-secret-1\nrita-secret-1\n")
    assert result.exit_code == 1
    assert "invalid role 'admin'" in result.output
    assert not (tmp_path / "dashboard-users.yaml").exists()


# Registry, datasets and runs


@pytest.mark.slow
def test_version_summary_reads_test_metrics(built: DashboardWorkspace):
    registry = open_registry(built.config(), Workspace.resolve(built.workspace))
    summary = data.version_summary(registry.client, registry.name, built.champion)
    assert summary.version == built.champion
    assert "champion" in summary.aliases
    assert 0.0 <= summary.test_auc <= 1.0
    low, high = summary.test_auc_ci
    assert low <= summary.test_auc <= high
    assert 0.0 <= summary.sensitivity <= 1.0
    assert 0.0 <= summary.specificity <= 1.0
    assert summary.dataset_version == "v1"


@pytest.mark.slow
def test_model_versions_frame_lists_both(built: DashboardWorkspace):
    registry = open_registry(built.config(), Workspace.resolve(built.workspace))
    frame = data.model_versions_frame(registry)
    assert frame["version"].tolist() == [built.challenger, built.champion]
    assert frame.set_index("version").loc[built.challenger, "gates"] == "passed"


@pytest.mark.slow
def test_dataset_growth_counts_labels_and_splits(space: Workspace):
    growth = data.dataset_growth(space)
    assert growth["version"].tolist() == ["v1"]
    row = growth.iloc[0]
    assert row["images"] == 60
    assert row["COVID"] == 30
    assert row["negative"] == 30
    assert (row["train"], row["val"], row["test"]) == (28, 12, 20)
    long = data.growth_long(growth, ["COVID", "negative"], "label")
    assert sorted(long["label"]) == ["COVID", "negative"]
    assert long["images"].sum() == 60


@pytest.mark.slow
def test_quarantine_frame_lists_broken_file(space: Workspace):
    quarantine = data.quarantine_frame(space)
    assert quarantine["file"].tolist() == [BROKEN_FILE_NAME]
    assert quarantine.iloc[0]["batch"] == "dashboard-test"
    assert quarantine.iloc[0]["reasons"]
    assert Path(quarantine.iloc[0]["path"]).is_file()


@pytest.mark.slow
def test_validation_frame_shows_import_result(space: Workspace):
    validation = data.validation_frame(space)
    assert len(validation) == 1
    row = validation.iloc[0]
    assert row["batch"] == "dashboard-test"
    assert row["rejected"] == 1
    assert row["accepted"] == 60
    assert "dashboard-test" in row["summary"]


def test_data_docs_zip_holds_the_site(space: Workspace):
    row = data.validation_frame(space).iloc[0]

    with zipfile.ZipFile(io.BytesIO(data.data_docs_zip(row["Data Docs"]))) as archive:
        names = archive.namelist()

    folder = row["validation id"]
    assert f"{folder}/index.html" in names
    assert any(name.startswith(f"{folder}/validations/") for name in names)


@pytest.mark.slow
def test_gallery_frame_applies_filters(built: DashboardWorkspace):
    store = DatasetStore(built.root)
    assert len(data.gallery_frame(store)) == 60
    covid_test = data.gallery_frame(store, labels=[1], splits=["test"])
    assert len(covid_test) == 10
    assert set(covid_test["label"]) == {1}
    with_ggo = data.gallery_frame(store, lesion="GGO")
    assert len(with_ggo) > 0
    assert (with_ggo["GGO"] == 1).all()
    assert data.gallery_frame(store, batches=["no-such-batch"]).empty
    with pytest.raises(ValueError, match="unknown lesion"):
        data.gallery_frame(store, lesion="Nodule")


@pytest.mark.slow
def test_comparison_tables_of_challenger(built: DashboardWorkspace):
    registry = open_registry(built.config(), Workspace.resolve(built.workspace))
    report = data.load_comparison(registry.client, registry.name, built.challenger)
    assert report["candidate"] == built.challenger
    assert report["champion"] == built.champion
    metrics = data.comparison_metrics_frame(report)
    assert metrics["metric"].tolist()[0] == "auc"
    assert {"candidate", "champion", "difference", "difference 95% CI"} <= set(metrics.columns)
    # Precision and F1 have no interval for a model that calls no image positive.
    always_defined = ["auc", "sensitivity", "specificity", "accuracy"]
    intervals = metrics.set_index("metric").loc[always_defined, "candidate 95% CI"]
    assert intervals.str.contains(" to ").all()
    raw = report["per_batch"]
    batches = data.slice_frame(raw)
    expected = [row["auc_difference"] < 0 or row["accuracy_difference"] < 0 for row in raw]
    assert batches["regression"].tolist() == expected
    assert {"candidate auc", "champion auc", "auc difference", "DeLong p"} <= set(batches.columns)
    assert data.load_comparison(registry.client, registry.name, built.champion) is None


@pytest.mark.slow
def test_runs_frame_and_epoch_history(built: DashboardWorkspace):
    registry = open_registry(built.config(), Workspace.resolve(built.workspace))
    runs = data.runs_frame(registry.client, "ladnn")
    assert len(runs) == 2
    assert set(runs["backbone"]) == {"efficientnet_lite0"}
    assert data.runs_frame(registry.client, "ladnn", variants=["baseline"]).empty
    history = data.epoch_history(registry.client, runs.iloc[0]["run id"])
    assert set(history["metric"]) == {
        "epoch_train_loss",
        "epoch_val_auc",
        "epoch_lr",
        "epoch_train_images_per_s",
    }
    assert history["epoch"].tolist() == [1, 1, 1, 1]


@pytest.mark.slow
def test_audit_frame_newest_first(built: DashboardWorkspace):
    registry = open_registry(built.config(), Workspace.resolve(built.workspace))
    audit = data.audit_frame(registry)
    assert audit.iloc[0]["action"] == "promote (override)"
    assert audit.iloc[0]["to"] == built.champion


def test_display_frame_marks_missing_values():
    frame = pd.DataFrame(
        {"auc": [0.81234, np.nan], "interval": ["0.700-0.900", None], "n": [20, 10]}
    )
    shown = data.display_frame(frame)
    assert shown["auc"].tolist() == ["0.812", "n/a"]
    assert shown["interval"].tolist() == ["0.700-0.900", "n/a"]
    assert shown["n"].tolist() == [20, 10]
    assert frame["auc"].isna().tolist() == [False, True]


# Scoring and uploads


def test_curves_and_confusion_of_known_scores():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    roc = scoring.roc_points(y, p)
    assert roc.iloc[0].tolist() == [0.0, 0.0]
    assert roc.iloc[-1].tolist() == [1.0, 1.0]
    confusion = scoring.confusion_frame(y, p, 0.5)
    assert confusion.loc["true COVID", "predicted COVID"] == 1
    assert confusion.loc["true negative", "predicted COVID"] == 1
    assert confusion.to_numpy().sum() == 4
    calibration = scoring.calibration_frame(y, p, n_bins=2)
    assert calibration["count"].tolist() == [2, 2]


@pytest.mark.slow
def test_diagnose_upload_scores_real_slice(built: DashboardWorkspace, release_dir: Path):
    loaded = scoring.load_registered(built.config(), Workspace.resolve(built.workspace), None)
    upload = uploads.Upload("slice.png", (release_dir / COVID_SLICE).read_bytes())
    diagnosis = uploads.diagnose_upload(loaded, upload)
    assert list(diagnosis.probabilities) == ["covid", *LESIONS]
    assert all(0.0 <= value <= 1.0 for value in diagnosis.probabilities.values())
    assert diagnosis.threshold == loaded.threshold
    overlays = scoring.explain_overlays(loaded, diagnosis.image_bytes, "slice.png")
    assert set(overlays) == {"covid", *LESIONS}
    assert overlays["covid"].dtype == np.uint8


@pytest.mark.slow
def test_diagnose_upload_names_broken_file(built: DashboardWorkspace):
    loaded = scoring.load_registered(built.config(), Workspace.resolve(built.workspace), None)
    with pytest.raises(ImageDecodeError, match=r"^notes\.png: not an image"):
        uploads.diagnose_upload(loaded, uploads.Upload("notes.png", b"meeting notes, not pixels"))


def test_contribution_reads_back_as_batch(tmp_path: Path, release_dir: Path):
    inbox = tmp_path / "inbox"
    files = [
        uploads.Upload("first slice.png", (release_dir / COVID_SLICE).read_bytes()),
        uploads.Upload("first slice.png", (release_dir / COVID_SLICE).read_bytes()),
        uploads.Upload("other.jpg", (release_dir / NEGATIVE_SLICE).read_bytes()),
    ]
    folder = uploads.write_contribution(
        inbox, files, label="covid", contributor="rita", source="doi:10.1000/example"
    )
    assert folder.parent == inbox
    assert not folder.name.startswith(".")
    assert [p.name for p in inbox.iterdir()] == [folder.name]
    header = (folder / "metadata.csv").read_text().splitlines()[0]
    assert header == "file_name,label,source,collected_on"
    batch_id, items = read_contribution(folder)
    # Files are named by the SHA-256 of their bytes, so the repeated upload is stored once.
    expected_names = sorted(
        f"{hashlib.sha256(upload.data).hexdigest()[:16]}{suffix}"
        for upload, suffix in ((files[0], ".png"), (files[2], ".jpg"))
    )
    assert sorted(Path(item.file_name).name for item in items) == expected_names
    assert "first slice" not in (folder / "metadata.csv").read_text()
    assert {item.label for item in items} == {1}
    assert {item.source for item in items} == {"doi:10.1000/example"}


def test_contribution_rejects_broken_file_first(tmp_path: Path, release_dir: Path):
    inbox = tmp_path / "inbox"
    files = [
        uploads.Upload("good.png", (release_dir / COVID_SLICE).read_bytes()),
        uploads.Upload("broken.png", b"not an image"),
    ]
    with pytest.raises(ImageDecodeError, match=r"^broken\.png"):
        uploads.write_contribution(
            inbox, files, label="negative", contributor="rita", source="upload"
        )
    assert not inbox.exists() or not any(inbox.iterdir())


def test_contribution_rejects_unknown_label(tmp_path: Path):
    with pytest.raises(ValueError, match="invalid label"):
        uploads.write_contribution(
            tmp_path, [uploads.Upload("a.png", b"")], label="maybe", contributor="r", source="s"
        )


# Prefect


def test_prefect_functions_need_api_url(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert orchestration.prefect_api_url() is None
    with pytest.raises(orchestration.PrefectUnavailable, match="PREFECT_API_URL is not set"):
        orchestration.recent_flow_runs()
    with pytest.raises(orchestration.PrefectUnavailable, match="PREFECT_API_URL is not set"):
        orchestration.start_retrain()


def test_prefect_unreachable_api_is_reported(monkeypatch):
    # Port 9 (discard) on the loopback interface: nothing listens there, so the connection fails.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(orchestration.PrefectUnavailable, match="does not answer"):
        orchestration.recent_flow_runs()


@pytest.mark.slow
def test_passwords_of_fixture_users_authenticate(built: DashboardWorkspace):
    for name, password in PASSWORDS.items():
        assert auth.authenticate(built.users_file, name, password) is not None
