"""Dataset versions committed with a real DVC repository, with and without git."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ladnn.config import ServersCfg
from ladnn.data.importer import ImportItem, import_items
from ladnn.data.store import DatasetStore
from ladnn.data.versioning import DvcError, commit_version, latest_version, list_versions

GIT_IDENTITY = ["-c", "user.name=ladnn tests", "-c", "user.email=tests@localhost"]


@pytest.fixture(scope="module")
def small_images(release_dir: Path) -> list[Path]:
    return sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[:4]


def _import(root: Path, paths: list[Path], batch_id: str) -> None:
    items = [
        ImportItem(
            file_name=path.name,
            read_bytes=path.read_bytes,
            label=0,
            patient_id=f"patient-{path.stem}",
            source="test",
        )
        for path in paths
    ]
    report = import_items(items, DatasetStore(root), batch_id, progress=False)
    assert report.added == [path.name for path in paths]


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=root, capture_output=True, text=True, check=True
    )
    return result.stdout


def _remote_files(workspace) -> list[Path]:
    return [path for path in workspace.dvc_remote.rglob("*") if path.is_file()]


def test_commit_without_git(tmp_path, workspace, small_images):
    root = tmp_path / "plain"
    root.mkdir()
    _import(root, small_images[:3], "batch-1")

    first, first_new = commit_version(root, workspace, "batch-1")

    assert first_new
    assert first.number == 1
    assert first.name == "v1"
    assert first.n_images == 3
    assert first.counts["label_0"] == 3
    assert first.git_tag is None
    assert (root / "data.dvc").is_file()
    # The remote contains one file per image, the metadata and the directory listing.
    assert len(_remote_files(workspace)) >= 5

    again, again_new = commit_version(root, workspace, "batch-1")

    assert not again_new
    assert again.number == 1
    assert again.md5 == first.md5

    _import(root, small_images[3:4], "batch-2")
    second, second_new = commit_version(root, workspace, "batch-2")

    assert second_new
    assert second.number == 2
    assert second.n_images == first.n_images + 1
    assert second.md5 != first.md5
    assert second.batch_ids == ["batch-1", "batch-2"]
    assert [version.number for version in list_versions(workspace)] == [1, 2]
    assert latest_version(workspace) == second


def test_commit_with_git_tags(tmp_path, workspace, small_images):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "README.md").write_text("dataset\n", encoding="utf-8")
    _git(root, "add", "README.md")
    _git(root, "commit", "-q", "-m", "Add README")
    _import(root, small_images[:2], "batch-1")

    version, new = commit_version(root, workspace, "batch-1")
    tags = _git(root, "tag", "--list", "data/*").split()
    tracked = _git(root, "ls-files").split()

    assert new
    assert version.number == 1
    assert version.git_tag == "data/v1"
    assert tags == ["data/v1"]
    assert "data.dvc" in tracked
    assert "data/metadata.csv" not in tracked
    assert len(_remote_files(workspace)) >= 4


def test_commit_without_dataset(tmp_path, workspace):
    with pytest.raises(FileNotFoundError) as caught:
        commit_version(tmp_path / "empty", workspace, "batch-1")

    assert "import" in str(caught.value)


def _cache_files(folder: Path) -> dict[Path, tuple[int, int]]:
    return {
        path: (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in (folder / "files").rglob("*")
        if path.is_file()
    }


def test_new_version_copies_only_batch(tmp_path, workspace, release_dir):
    root = tmp_path / "incremental"
    root.mkdir()
    # Images from different figures, so no two are near-duplicates of another patient.
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[::40][:8]
    _import(root, images[:5], "batch-1")
    commit_version(root, workspace, "batch-1")
    cache_before = _cache_files(workspace.dvc_cache)
    remote_before = _cache_files(workspace.dvc_remote)

    _import(root, images[5:], "batch-2")
    commit_version(root, workspace, "batch-2")
    cache_after = _cache_files(workspace.dvc_cache)
    remote_after = _cache_files(workspace.dvc_remote)

    untouched = {path: cache_after.get(path) == stamp for path, stamp in cache_before.items()}
    assert all(untouched.values()), [path for path, same in untouched.items() if not same]
    # Three new images, the new metadata.csv and the new directory listing.
    assert len(cache_after) - len(cache_before) == 5
    assert len(remote_after) - len(remote_before) == 5
    assert all(remote_after.get(path) == stamp for path, stamp in remote_before.items())


def _dvc_config(root: Path) -> dict[str, str]:
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "--list"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in listed.splitlines())


def test_dvc_config_follows_servers_setting(tmp_path, workspace, small_images):
    root = tmp_path / "switch"
    root.mkdir()
    _import(root, small_images[:1], "batch-1")

    commit_version(root, workspace, "batch-1")
    first = _dvc_config(root)
    commit_version(
        root,
        workspace,
        "batch-1",
        servers=ServersCfg(dvc_remote="s3://bucket/ladnn", s3_endpoint_url="http://127.0.0.1:9"),
    )
    shared = _dvc_config(root)
    _import(root, small_images[1:2], "batch-2")
    commit_version(root, workspace, "batch-2", servers=ServersCfg(dvc_remote="shared-remote"))
    relative = _dvc_config(root)

    assert first == {
        "core.analytics": "false",
        "core.remote": "workspace",
        "cache.dir": str(workspace.dvc_cache),
        "remote.workspace.url": str(workspace.dvc_remote),
    }
    assert shared["core.remote"] == "shared"
    assert shared["remote.shared.url"] == "s3://bucket/ladnn"
    assert shared["remote.shared.endpointurl"] == "http://127.0.0.1:9"
    # A relative folder is read from the data root, and the endpoint of the S3 remote is gone.
    assert relative["remote.shared.url"] == str(root / "shared-remote")
    assert "remote.shared.endpointurl" not in relative
    assert any((root / "shared-remote").rglob("*.dir"))


def _dvc_cli(root: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def _remote_object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def _assert_same_as_dvc_add(root: Path, remote: Path) -> None:
    """Check that `dvc add data` computes the recorded hash and the remote has all its files."""
    recorded = (root / "data.dvc").read_text("utf-8")
    directory = yaml.safe_load(recorded)["outs"][0]["md5"]
    listing = json.loads(_remote_object(remote, directory).read_text("utf-8"))
    # `dvc status --cloud` trusts a directory object without looking for its files.
    missing = [entry for entry in listing if not _remote_object(remote, entry["md5"]).is_file()]
    assert not missing
    assert "up to date" in _dvc_cli(root, "status")
    _dvc_cli(root, "add", "-q", "data")
    assert (root / "data.dvc").read_text("utf-8") == recorded


def _two_versions(
    root: Path, workspace, images: list[Path], servers: ServersCfg | None = None
) -> None:
    """Record all but the last two images as v1, then the last two as v2."""
    root.mkdir()
    _import(root, images[:-2], "batch-1")
    commit_version(root, workspace, "batch-1", servers=servers)
    _import(root, images[-2:], "batch-2")
    commit_version(root, workspace, "batch-2", servers=servers)


def test_update_reads_only_changed_files(tmp_path, workspace, release_dir, caplog):
    root = tmp_path / "changed"
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[::40][:8]
    _two_versions(root, workspace, images[:6])
    _import(root, images[6:], "batch-3")

    with caplog.at_level("INFO", logger="ladnn.data.dvc_update"):
        third, new = commit_version(root, workspace, "batch-3")

    assert new
    assert third.n_images == 8
    # Two new images and the rewritten metadata.csv are hashed. The other six keep their hashes.
    assert "9 file(s) in data/, 3 hashed" in caplog.text
    _assert_same_as_dvc_add(root, workspace.dvc_remote)


def test_update_sees_a_file_changed_in_place(tmp_path, workspace, release_dir):
    root = tmp_path / "in-place"
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[::40][:5]
    _two_versions(root, workspace, images[:4])
    first_image = sorted((root / "data" / "images").iterdir())[0]
    first_image.write_bytes(images[4].read_bytes())

    changed, new = commit_version(root, workspace, "edit")

    assert new
    assert changed.number == 3
    _assert_same_as_dvc_add(root, workspace.dvc_remote)


def test_failed_push_retry_sends_all(tmp_path, workspace, release_dir):
    root = tmp_path / "retry"
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[::40][:6]
    blocker = tmp_path / "remote"
    servers = ServersCfg(dvc_remote=str(blocker))
    _two_versions(root, workspace, images[:5], servers)
    _import(root, images[5:], "batch-3")
    shutil.rmtree(blocker)
    blocker.write_text("a file where the remote's folder belongs\n", encoding="utf-8")

    with pytest.raises(DvcError, match="not recorded"):
        commit_version(root, workspace, "batch-3", servers=servers)

    assert [version.number for version in list_versions(workspace)] == [1, 2]
    blocker.unlink()
    third, new = commit_version(root, workspace, "batch-3", servers=servers)
    assert new
    assert third.number == 3
    _assert_same_as_dvc_add(root, blocker)


def test_update_follows_dvcignore(tmp_path, workspace, release_dir):
    root = tmp_path / "ignored"
    images = sorted((release_dir / "CT_COVID").glob("*.png"))[::40][:4]
    _two_versions(root, workspace, images[:3])
    (root / ".dvcignore").write_text("*.scratch\n", encoding="utf-8")
    (root / "data" / "notes.scratch").write_text("not part of the dataset\n", encoding="utf-8")
    _import(root, images[3:], "batch-3")

    third, new = commit_version(root, workspace, "batch-3")

    listing = json.loads(_remote_object(workspace.dvc_remote, third.md5).read_text("utf-8"))
    assert new
    assert "notes.scratch" not in {entry["relpath"] for entry in listing}
    _assert_same_as_dvc_add(root, workspace.dvc_remote)
