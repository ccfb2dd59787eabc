"""Entry point of the LA-DNN dashboard: `ladnn dashboard` runs `streamlit run dashboards/app.py`.

Signed-out visitors get only the sign-in page; signed-in users get every page, and the pages show
action buttons to reviewers only.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path; the pages import the `dashboards` package,
# which lives in the checkout root one level up.
_CHECKOUT = Path(__file__).resolve().parents[1]
if str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

import logging  # noqa: E402

import streamlit as st  # noqa: E402

from dashboards import ui  # noqa: E402

# Sign-ins, review decisions and failures log to stderr; basicConfig does nothing when the
# process has configured logging already.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
for _name in ("mlflow", "alembic", "urllib3", "httpx", "prefect", "PIL", "matplotlib"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# No page or page_icon icons: a Material icon makes the browser fetch its favicon from
# fonts.gstatic.com, and emoji need an emoji font on the viewing machine.
st.set_page_config(page_title="LA-DNN dashboard", layout="wide")
current = ui.settings()


def sign_in_page() -> None:
    st.title("LA-DNN dashboard")
    st.write(
        "Model review, evaluation and data of the LA-DNN chest-CT classifier. Reviewers approve "
        "or reject models; analysts see everything read-only."
    )
    ui.sign_in_form(current)


user = ui.signed_in_user(current)
if user is None:
    navigation = st.navigation([st.Page(sign_in_page, title="Sign in")])
else:
    navigation = st.navigation(
        {
            "Models": [
                st.Page("pages/overview.py", title="Overview", default=True),
                st.Page("pages/compare.py", title="Compare"),
                st.Page("pages/review.py", title="Review"),
                st.Page("pages/runs.py", title="Runs"),
            ],
            "Images": [
                st.Page("pages/diagnose.py", title="Diagnose"),
                st.Page("pages/dataset.py", title="Data"),
            ],
        }
    )
    with st.sidebar:
        st.markdown(f"Signed in as **{user.name}** ({user.role})")
        if st.button("Sign out", key="sign_out"):
            ui.sign_out()
            st.rerun()
        st.caption(f"Workspace: `{current.workspace.root}`")
navigation.run()
