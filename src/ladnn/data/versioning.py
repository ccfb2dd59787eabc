"""Dataset versions: DVC commits of `data/`, pushed to the DVC remote and tagged `data/vN`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from ladnn.config import ServersCfg
from ladnn.data.dvc_update import push_staged, record_snapshot, stage_data
from ladnn.data.store import DatasetStore, atomic_write_bytes
from ladnn.workspace import Workspace

__all__ = ["DatasetVersion", "commit_version", "list_versions", "latest_version", "DvcError"]

logger = logging.getLogger(__name__)


class DvcError(RuntimeError):
    """A DVC or git command failed."""


@dataclass(frozen=True)
class DatasetVersion:
    number: int
    md5: str
    created_at: str
    batch_ids: list[str]
    n_images: int
    counts: dict[str, int]
    dvc_file: str
    git_tag: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # Data-validation runs of the batches in this version, oldest first; records written before
    # the validation gate existed load with an empty list.
    validation_ids: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"v{self.number}"


def _run(command: list[str], cwd: Path, what: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DvcError(
            f"{what} failed in {cwd} (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result.stdout


def _dvc(args: list[str], cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd, f"dvc {' '.join(args)}")


def _git_toplevel(root: Path) -> Path | None:
    result = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(result.stdout.strip()).resolve() if result.returncode == 0 else None


def ensure_dvc_repo(root: Path, workspace: Workspace, servers: ServersCfg | None = None) -> None:
    """Initialise DVC in `root` if needed, point its cache at the workspace and its default remote
    at `servers.dvc_remote` (with `servers.s3_endpoint_url`), else at the workspace's folder.

    The remote goes to `.dvc/config.local`, which git ignores. It contains no credentials, because
    DVC reads those from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3)."""
    if not (root / ".dvc").is_dir():
        toplevel = _git_toplevel(root)
        if toplevel is None:
            _dvc(["init", "--no-scm", "-q"], root)
        elif toplevel == root.resolve():
            _dvc(["init", "-q"], root)
        else:
            _dvc(["init", "--subdir", "-q"], root)
    _configure_dvc(root, workspace, servers)


def _configure_dvc(root: Path, workspace: Workspace, servers: ServersCfg | None) -> None:
    """Set the cache and the default remote in `.dvc/config.local` through DVC's config API.

    Editing the file in this process replaces three `dvc` processes, about 1 s per import.
    The remote's section is replaced whole, as `dvc remote add --force` does."""
    from dvc.config import Config

    shared_url = servers.dvc_remote if servers is not None else ""
    if shared_url and "://" not in shared_url:
        # A local folder, relative to the data root as `dvc remote add` run there would read it.
        shared_url = os.path.join(root, shared_url)
    name = "shared" if shared_url else "workspace"
    remote = {"url": shared_url or os.path.abspath(workspace.dvc_remote)}
    if shared_url and servers.s3_endpoint_url:
        remote["endpointurl"] = servers.s3_endpoint_url
    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    with config.edit("local") as local:
        local["core"].update({"analytics": "false", "remote": name})
        local["cache"]["dir"] = os.path.abspath(workspace.dvc_cache)
        local["remote"][name] = remote


def _versions_file(workspace: Workspace) -> Path:
    return workspace.datasets_dir / "versions.json"


def list_versions(workspace: Workspace) -> list[DatasetVersion]:
    path = _versions_file(workspace)
    if not path.is_file():
        return []
    return [DatasetVersion(**record) for record in json.loads(path.read_text("utf-8"))]


def latest_version(workspace: Workspace) -> DatasetVersion | None:
    versions = list_versions(workspace)
    return versions[-1] if versions else None


def _save_versions(workspace: Workspace, versions: list[DatasetVersion]) -> None:
    text = json.dumps([asdict(version) for version in versions], indent=2)
    atomic_write_bytes(_versions_file(workspace), text.encode("utf-8"))


def _dvc_md5(text: str) -> str | None:
    """Return the hash in the text of a `.dvc` file, or None when it is not one."""
    try:
        return str(yaml.safe_load(text)["outs"][0]["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def _tagged_md5(root: Path, tag: str) -> str | None:
    """Return the hash of `data.dvc` in the commit of `tag`, or None when it has none."""
    shown = subprocess.run(
        ["git", "show", f"{tag}:./data.dvc"], cwd=root, capture_output=True, text=True, check=False
    )
    return _dvc_md5(shown.stdout) if shown.returncode == 0 else None


def _tag_in_git(root: Path, number: int) -> str | None:
    """Commit the changed pointer files and tag the commit `data/vN` when `root` is in git."""
    toplevel = _git_toplevel(root)
    if toplevel is None:
        return None
    identity = ["-c", "user.name=ladnn", "-c", "user.email=ladnn@localhost"]
    has_identity = (
        subprocess.run(
            ["git", "config", "user.email"], cwd=root, capture_output=True, check=False
        ).returncode
        == 0
    )
    pointer_files = [
        p
        for p in ("data.dvc", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
        if (root / p).exists()
    ]
    _run(["git", "add", "--", *pointer_files], root, "git add")
    staged = subprocess.run(
        ["git", "diff", "--cached", "--quiet", "--", *pointer_files], cwd=root, check=False
    ).returncode
    if staged:
        _run(
            [
                "git",
                *([] if has_identity else identity),
                "commit",
                "-q",
                "-m",
                f"Add dataset version v{number}",
                "--",
                *pointer_files,
            ],
            root,
            "git commit",
        )
    tag = f"data/v{number}"
    exists = (
        subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
            cwd=root,
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if exists and _tagged_md5(root, tag) == _dvc_md5((root / "data.dvc").read_text("utf-8")):
        logger.warning("git tag %s already exists in %s; left unchanged", tag, toplevel)
        return tag
    if exists:
        # An import killed after tagging and before recording the version leaves a tag that the
        # next version, with other data, must take over.
        logger.warning(
            "git tag %s in %s names other data, left by an interrupted import; moving it",
            tag,
            toplevel,
        )
        _run(["git", "tag", "-f", tag], root, "git tag")
        return tag
    has_commit = (
        subprocess.run(
            ["git", "rev-parse", "-q", "--verify", "HEAD"],
            cwd=root,
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not has_commit:
        logger.warning("git repository %s has no commit to tag as %s", toplevel, tag)
        return None
    _run(["git", "tag", tag], root, "git tag")
    return tag


def _push_failed(root: Path, reason: str) -> str:
    """Return the message of a failed push of `root/data`."""
    return (
        f"pushing {root / 'data'} to the DVC remote failed: {reason}. The dataset version was "
        "not recorded. Import again once the remote accepts writes, and the files not yet "
        "pushed are sent then."
    )


def commit_version(
    root: str | Path,
    workspace: Workspace,
    batch_id: str,
    *,
    git_tag: bool = True,
    validation_id: str | None = None,
    servers: ServersCfg | None = None,
) -> tuple[DatasetVersion, bool]:
    """Record `root/data` as a dataset version; return it and whether it is new.

    Unchanged data (the same DVC hash as an earlier version) reuses that version. A new version is
    pushed to the DVC remote (`servers.dvc_remote`, else the workspace's folder) before it is recorded, so a recorded version can always be
    restored with `dvc checkout`/`dvc pull`. A new version's `validation_ids` are the latest
    version's followed by `validation_id`.
    """
    root = Path(root).resolve()
    store = DatasetStore(root)
    if not store.exists():
        raise FileNotFoundError(f"no dataset at {store.data_dir}: import a release or batch first")
    ensure_dvc_repo(root, workspace, servers)
    # After the first version, only changed files are hashed and pushed, because `dvc add` and
    # `dvc push` would check every file of the dataset.
    staged = stage_data(root)
    if staged is None:
        _dvc(["add", "-q", "data"], root)
        dvc_text = (root / "data.dvc").read_text("utf-8")
    else:
        dvc_text = staged.dvc_text
    md5 = yaml.safe_load(dvc_text)["outs"][0]["md5"]

    versions = list_versions(workspace)
    for version in reversed(versions):
        if version.md5 == md5:
            logger.info("data unchanged: dataset version %s (md5 %s)", version.name, md5)
            return version, False

    if staged is None:
        _dvc(["push", "-q", "data.dvc"], root)
    else:
        from dvc.exceptions import DvcException

        try:
            failed = push_staged(root, staged)
        except (OSError, DvcException) as error:
            raise DvcError(_push_failed(root, str(error))) from error
        if failed:
            examples = ", ".join(failed[:5])
            raise DvcError(_push_failed(root, f"{len(failed)} object(s), for example {examples}"))
        record_snapshot(root, staged)
    metadata = store.read_metadata()
    counts = {
        **{f"label_{label}": int((metadata["label"] == label).sum()) for label in (0, 1)},
        **{
            f"split_{split}": int((metadata["split"] == split).sum())
            for split in ("train", "val", "test")
        },
    }
    number = len(versions) + 1
    tag = _tag_in_git(root, number) if git_tag else None
    version = DatasetVersion(
        number=number,
        md5=md5,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        batch_ids=sorted(metadata["batch_id"].dropna().unique().tolist()),
        n_images=len(metadata),
        counts=counts,
        dvc_file=dvc_text,
        git_tag=tag,
        notes={"added_by_batch": batch_id},
        validation_ids=[
            *(versions[-1].validation_ids if versions else []),
            *([validation_id] if validation_id else []),
        ],
    )
    _save_versions(workspace, [*versions, version])
    logger.info("created dataset version %s (%d images, md5 %s)", version.name, len(metadata), md5)
    return version, True
