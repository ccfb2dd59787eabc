"""Update the DVC-tracked `data/` folder at a cost that follows the change, not the dataset.

`dvc add data` reads the state of every file and checks the whole tree out again. `dvc push
data.dvc` collects an index of every file. So both grow with the dataset, by about 0.3 ms per
image (docs/benchmarks.md). This module does the same work through DVC's own libraries:

- Every file is stat-ed. A file whose size, modification time and inode match the snapshot of
  the last update keeps its recorded hash. Any other file is hashed (through DVC's state
  database) and copied into the DVC cache.
- The directory object is built and written with `dvc_data`, so `data.dvc` gets the hash that
  `dvc add data` computes for the same files.
- The push sends the changed files, then the directory object.

It needs an earlier `data.dvc` whose directory object is in the cache. Otherwise the caller falls
back to the `dvc` commands. Without a valid snapshot every file is checked through DVC's state
database once, and the result stays correct.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ladnn.data.store import atomic_write_bytes

if TYPE_CHECKING:
    from dvc_data.hashfile.hash_info import HashInfo

__all__ = ["StagedData", "stage_data", "push_staged", "record_snapshot"]

logger = logging.getLogger(__name__)

# Inside `.dvc/tmp`, which DVC's own `.gitignore` keeps out of git.
SNAPSHOT = Path(".dvc") / "tmp" / "ladnn-data-files.json"
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class StagedData:
    """`data/` committed to the DVC cache and recorded in `data.dvc`, not yet pushed."""

    md5: str
    dvc_text: str
    # Objects the remote may lack: the changed files, then the directory object.
    objects: tuple[HashInfo, ...]
    n_files: int
    n_hashed: int
    # URL of the default remote when staged.
    remote: str
    # {relpath: [size, mtime_ns, inode, md5]}, saved by `record_snapshot` once the remote has it.
    files: dict[str, list] = field(repr=False, default_factory=dict)


def _read_stage(root: Path) -> dict | None:
    path = root / "data.dvc"
    if not path.is_file():
        return None
    stage = yaml.safe_load(path.read_text("utf-8"))
    outs = stage.get("outs") if isinstance(stage, dict) else None
    if not outs or len(outs) != 1:
        return None
    out = outs[0]
    if out.get("path") != "data" or out.get("hash") != "md5":
        return None
    if not str(out.get("md5", "")).endswith(".dir"):
        return None
    return stage


def _remote_url(repo) -> str:
    try:
        return str(repo.config["remote"][repo.config["core"]["remote"]]["url"])
    except KeyError:
        return ""


def _read_snapshot(root: Path, md5: str, remote: str) -> dict[str, list]:
    """Return {relpath: [size, mtime_ns, inode, md5]} recorded for `md5` pushed to `remote`,
    or {} when the snapshot is missing or belongs to other data or another remote."""
    try:
        snapshot = json.loads((root / SNAPSHOT).read_text("utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    if (snapshot.get("version"), snapshot.get("md5"), snapshot.get("remote")) != (
        SNAPSHOT_VERSION,
        md5,
        remote,
    ):
        return {}
    return snapshot.get("files", {})


def record_snapshot(root: str | Path, staged: StagedData) -> None:
    """Save the files of `staged` as the snapshot of the next update.

    Call it only once the remote contains `staged`. The next update pushes only files that are
    not in the snapshot, so a snapshot of data that never reached the remote would leave files
    behind."""
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "md5": staged.md5,
        "remote": staged.remote,
        "files": staged.files,
    }
    text = json.dumps(snapshot)
    atomic_write_bytes(Path(root) / SNAPSHOT, text.encode("utf-8"))


def _walk(repo, data_dir: Path) -> list[tuple[str, os.stat_result]]:
    """Return (path relative to `data_dir` with "/", stat) for each file DVC would track."""
    files = []
    for folder, _, names in repo.dvcignore.walk(repo.fs, str(data_dir)):
        prefix = os.path.relpath(folder, data_dir).replace(os.sep, "/")
        prefix = "" if prefix == "." else f"{prefix}/"
        for name in names:
            stat = os.stat(os.path.join(folder, name), follow_symlinks=False)
            files.append((f"{prefix}{name}", stat))
    return files


def stage_data(root: str | Path) -> StagedData | None:
    """Commit `root/data` to the DVC cache and rewrite `data.dvc`.

    Return None when `dvc add` is needed instead. Only files that changed since the last update
    are read. The directory object is the one `dvc add data` would write for the same files."""
    from dvc.repo import Repo
    from dvc_data.hashfile.db import add_update_tree
    from dvc_data.hashfile.hash import hash_file
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.fs import localfs

    root = Path(root).resolve()
    stage = _read_stage(root)
    if stage is None:
        return None
    previous_md5 = stage["outs"][0]["md5"]
    data_dir = root / "data"
    with Repo(str(root)) as repo:
        cache = repo.cache.local
        if not cache.exists(previous_md5):
            logger.info("directory object %s is not in the DVC cache", previous_md5)
            return None
        remote = _remote_url(repo)
        known = _read_snapshot(root, previous_md5, remote)
        tree = Tree()
        snapshot: dict[str, list] = {}
        changed: list[tuple[str, str]] = []
        total_size = 0
        for relpath, stat in _walk(repo, data_dir):
            key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
            recorded = known.get(relpath)
            if recorded is not None and recorded[:3] == key:
                file_md5 = recorded[3]
            else:
                path = str(data_dir / relpath)
                _, hash_info = hash_file(path, localfs, "md5", state=repo.state)
                file_md5 = hash_info.value
                changed.append((path, file_md5))
            tree.add(tuple(relpath.split("/")), Meta(size=stat.st_size), HashInfo("md5", file_md5))
            snapshot[relpath] = [*key, file_md5]
            total_size += stat.st_size
        if changed:
            paths, oids = zip(*changed, strict=True)
            cache.add(list(paths), localfs, list(oids))
        tree.digest()
        add_update_tree(cache, tree)
        md5 = tree.hash_info.value
        # The snapshot's files reached the remote with the version it was recorded for.
        pushed = {entry[3] for entry in known.values()}
        new = dict.fromkeys(oid for _, oid in changed if oid not in pushed)
        objects = (*(HashInfo("md5", oid) for oid in new), tree.hash_info)

    out = stage["outs"][0]
    out.update({"md5": md5, "size": total_size, "nfiles": len(tree)})
    dvc_text = yaml.safe_dump(stage, sort_keys=False)
    if dvc_text != (root / "data.dvc").read_text("utf-8"):
        atomic_write_bytes(root / "data.dvc", dvc_text.encode("utf-8"))
    logger.info("DVC: %d file(s) in data/, %d hashed, directory %s", len(tree), len(changed), md5)
    return StagedData(md5, dvc_text, objects, len(tree), len(changed), remote, snapshot)


def push_staged(root: str | Path, staged: StagedData) -> list[str]:
    """Push the staged objects to the default remote, the directory object after its files.

    Return the hashes of the objects that failed to transfer. DVC's own push also writes every
    file of the directory into its index of the remote, which took about 20 microseconds per file
    in a profile at 10,861 files. That index only saves queries to the remote, so this push
    leaves it unchanged.

    NOTE: `get_remote_odb` raises for cloud-versioned remotes (`version_aware`, `worktree`), so
    with such a remote the import fails here instead of falling back to `dvc push`."""
    from dvc.repo import Repo
    from dvc_data.hashfile.transfer import transfer

    *files, directory = staged.objects
    with Repo(str(Path(root).resolve())) as repo:
        cache = repo.cache.local
        remote = repo.cloud.get_remote_odb(None, "push")
        result = transfer(cache, remote, files, cache_odb=cache)
        if result.failed:
            return sorted(info.value for info in result.failed)
        remote.add(cache.oid_to_path(directory.value), cache.fs, directory.value)
    return []
