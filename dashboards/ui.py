"""Streamlit pieces shared by the pages: settings, the cached registry and models, the user."""

from __future__ import annotations

import logging
import os
import time

import streamlit as st

from dashboards.auth import User, UsersFileError, authenticate, load_users
from dashboards.scoring import load_registered
from dashboards.settings import CONFIG_ENV, OVERRIDES_ENV, PROFILE_ENV, Settings, load_settings
from ladnn.evaluation.registered import LoadedModel
from ladnn.registry.review import Registry
from ladnn.registry.workflow import open_registry

__all__ = [
    "USER_KEY",
    "settings",
    "registry",
    "loaded_model",
    "current_user",
    "require_user",
    "signed_in_user",
    "sign_in_form",
    "sign_out",
    "format_number",
]

logger = logging.getLogger("ladnn.dashboard")

USER_KEY = "ladnn_user"
_FAILED_KEY = "ladnn_failed_sign_ins"
# After this many failed sign-ins a session waits LOCKOUT_SECONDS before the next attempt.
MAX_FAILED_SIGN_INS = 5
LOCKOUT_SECONDS = 60


@st.cache_resource(show_spinner=False)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings()


def settings() -> Settings:
    """Load the workspace and configuration named by the environment; stop the page if invalid."""
    names = ("LADNN_WORKSPACE", CONFIG_ENV, PROFILE_ENV, OVERRIDES_ENV, "LADNN_DASHBOARD_USERS")
    environment = tuple((name, os.environ.get(name, "")) for name in names)
    try:
        return _settings_for(environment)
    except (ValueError, FileNotFoundError) as err:
        st.error(f"The dashboard configuration is invalid: {err}")
        st.stop()


@st.cache_resource(show_spinner=False)
def _registry_for(tracking_uri: str, audit_uri: str, name: str, _settings: Settings) -> Registry:
    return open_registry(_settings.cfg, _settings.workspace)


def registry(current: Settings) -> Registry:
    """Open the registry of the configured model and reconcile its alias with the audit log."""
    cfg = current.cfg
    opened = _registry_for(
        current.tracking_uri, cfg.tracking.audit_uri, cfg.tracking.registered_model, current
    )
    opened.reconcile()
    return opened


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def _model_for(tracking_uri: str, name: str, version: str, _settings: Settings) -> LoadedModel:
    return load_registered(_settings.cfg, _settings.workspace, version)


def loaded_model(current: Settings, version: str) -> LoadedModel:
    """Load a registered version's network, once per server process."""
    return _model_for(current.tracking_uri, current.model_name, str(version), current)


def current_user() -> User | None:
    value = st.session_state.get(USER_KEY)
    return User(**value) if value else None


def sign_out() -> None:
    user = current_user()
    st.session_state.pop(USER_KEY, None)
    if user is not None:
        logger.info("dashboard user %s signed out", user.name)


def sign_in_form(current: Settings) -> None:
    """Render the sign-in form; a matching name and password put the user in the session."""
    try:
        users = load_users(current.users_file)
    except UsersFileError as err:
        st.error(str(err))
        return
    if not users:
        st.warning(
            f"No dashboard users are defined in {current.users_file}. Create one with "
            "`ladnn dashboard add-user NAME --role reviewer` (or `--role analyst`)."
        )
        return

    failures = st.session_state.get(_FAILED_KEY, (0, 0.0))
    with st.form("sign_in"):
        name = st.text_input("User name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in")
    if not submitted:
        return

    count, last = failures
    wait = LOCKOUT_SECONDS - (time.monotonic() - last)
    if count >= MAX_FAILED_SIGN_INS and wait > 0:
        st.error(f"Too many failed sign-ins. Try again in {wait:.0f} seconds.")
        return

    user = authenticate(current.users_file, name.strip(), password)
    if user is None:
        st.session_state[_FAILED_KEY] = (count + 1, time.monotonic())
        logger.warning("failed dashboard sign-in for user name %r", name.strip())
        st.error("Unknown user name or wrong password.")
        return

    st.session_state.pop(_FAILED_KEY, None)
    st.session_state[USER_KEY] = {"name": user.name, "role": user.role}
    logger.info("dashboard user %s signed in as %s", user.name, user.role)
    st.rerun()


def _refresh_user(current: Settings) -> User | None:
    """Re-read the signed-in user's role, so a removed or changed user takes effect at once."""
    user = current_user()
    if user is None:
        return None
    try:
        record = load_users(current.users_file).get(user.name)
    except UsersFileError:
        record = None
    if record is None:
        sign_out()
        return None
    if record["role"] != user.role:
        user = User(name=user.name, role=str(record["role"]))
        st.session_state[USER_KEY] = {"name": user.name, "role": user.role}
    return user


def signed_in_user(current: Settings) -> User | None:
    """Return the signed-in user with the role the users file gives now, or None."""
    return _refresh_user(current)


def require_user(current: Settings) -> User:
    """Return the signed-in user; otherwise show the sign-in form and stop the page."""
    user = _refresh_user(current)
    if user is None:
        st.info("Sign in to use the dashboard.")
        sign_in_form(current)
        st.stop()
    return user


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"
