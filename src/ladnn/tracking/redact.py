"""Remove secrets from configuration values before they are logged to MLflow or written to disk."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_url", "redact_secrets"]

REDACTED = "***"
# Keys whose whole value is a secret, whatever it looks like.
_SECRET_KEYS = re.compile(r"password|passwd|secret|token|api_key|credential", re.IGNORECASE)


def redact_url(value: str) -> str:
    """Replace the password of a URL such as `postgresql://user:password@host/db` with `***`."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password or "@" not in parts.netloc:
        return value
    credentials, host = parts.netloc.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def redact_secrets(values: Any, key: str = "") -> Any:
    """Return a copy of nested dicts and lists with URL passwords and secret-named keys redacted."""
    if isinstance(values, dict):
        return {name: redact_secrets(value, str(name)) for name, value in values.items()}
    if isinstance(values, list | tuple):
        return type(values)(redact_secrets(value, key) for value in values)
    if isinstance(values, str):
        if values and _SECRET_KEYS.search(key):
            return REDACTED
        return redact_url(values)
    return values
