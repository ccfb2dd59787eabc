"""Dashboard users: names, roles and salted scrypt password hashes in a YAML file.

The file maps each user name to its role and hash parameters:

    users:
      rita:
        role: reviewer
        algorithm: scrypt
        n: 16384
        r: 8
        p: 1
        salt: <32 hex digits>
        hash: <64 hex digits>

Passwords are never stored, logged or returned. The file is written with mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "ROLES",
    "REVIEWER",
    "ANALYST",
    "USERS_ENV",
    "User",
    "UsersFileError",
    "hash_password",
    "verify_password",
    "load_users",
    "add_user",
    "authenticate",
    "users_file_path",
]

logger = logging.getLogger(__name__)

REVIEWER = "reviewer"
ANALYST = "analyst"
ROLES = (REVIEWER, ANALYST)
USERS_ENV = "LADNN_DASHBOARD_USERS"
USERS_FILE_NAME = "dashboard-users.yaml"

# scrypt cost parameters for new hashes (RFC 7914 interactive-login values: 16 MiB, tens of ms).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_LENGTH = 8
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class UsersFileError(ValueError):
    """The users file or a user entry is invalid."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_reviewer(self) -> bool:
        return self.role == REVIEWER


def users_file_path(workspace_root: Path) -> Path:
    """Return `$LADNN_DASHBOARD_USERS`, else `<workspace>/dashboard-users.yaml`."""
    configured = os.environ.get(USERS_ENV)
    return Path(configured).expanduser() if configured else workspace_root / USERS_FILE_NAME


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must cover 128 * n * r bytes plus overhead, or OpenSSL rejects the parameters.
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r,
        dklen=HASH_BYTES,
    )


def hash_password(password: str) -> dict[str, str | int]:
    """Hash `password` with a fresh random salt; return the fields stored for a user."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return {
        "algorithm": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "hash": digest.hex(),
    }


def verify_password(password: str, record: dict) -> bool:
    """Check `password` against a stored record in constant time; False for a malformed record."""
    if record.get("algorithm") != "scrypt":
        return False
    try:
        salt = bytes.fromhex(str(record["salt"]))
        expected = bytes.fromhex(str(record["hash"]))
        digest = _scrypt(password, salt, int(record["n"]), int(record["r"]), int(record["p"]))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def load_users(path: Path) -> dict[str, dict]:
    """Read the users file; a missing file means no users."""
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as err:
        raise UsersFileError(f"invalid YAML in users file {path}: {err}") from err
    users = loaded.get("users", {}) if isinstance(loaded, dict) else None
    if not isinstance(users, dict):
        raise UsersFileError(f"users file {path} must hold a mapping `users: {{name: {{...}}}}`")
    for name, record in users.items():
        if not isinstance(record, dict) or record.get("role") not in ROLES:
            raise UsersFileError(
                f"user {name!r} in {path} needs a role, one of {list(ROLES)}, and a password hash"
            )
    return users


def _write_users(path: Path, users: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"users": users}, sort_keys=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_user(path: Path, name: str, role: str, password: str, *, replace: bool = False) -> bool:
    """Add a user (or, with `replace`, change an existing one); return whether it already existed.

    Raises `UsersFileError` for an invalid name, role or password, or for an existing user
    without `replace`.
    """
    if not _NAME_PATTERN.match(name):
        raise UsersFileError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    if role not in ROLES:
        raise UsersFileError(f"invalid role {role!r}: expected one of {list(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    users = load_users(path)
    existed = name in users
    if existed and not replace:
        raise UsersFileError(
            f"user {name!r} already exists in {path}; pass --replace to change the role or password"
        )
    users[name] = {"role": role, **hash_password(password)}
    _write_users(path, users)
    logger.info(
        "%s dashboard user %s (%s) in %s", "updated" if existed else "added", name, role, path
    )
    return existed


def authenticate(path: Path, name: str, password: str) -> User | None:
    """Return the user when the name and password match an entry of the users file, else None."""
    users = load_users(path)
    record = users.get(name)
    if record is None:
        # Hash anyway, so an unknown name takes as long as a wrong password.
        verify_password(password, hash_password("unknown user"))
        return None
    if not verify_password(password, record):
        return None
    return User(name=name, role=str(record["role"]))
