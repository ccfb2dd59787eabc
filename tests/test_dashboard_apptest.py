"""The dashboard's pages run by Streamlit's AppTest against a real small workspace.

Every test that changes the review state works on its own copy of the MLflow database.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_workspace import PASSWORDS, DashboardWorkspace, shared_workspace
from streamlit.testing.v1 import AppTest

from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
# Seconds one script run may take; the first Compare run loads and scores both models.
RUN_TIMEOUT = 180
ACTION_LABELS = ("Approve", "Reject", "Roll back", "Confirm", "Start retraining", "Add to")
COVID_SLICE = "CT_COVID/2020.01.24.919183-p27-132.png"


@pytest.fixture(scope="module")
def built(tmp_path_factory, release_dir: Path) -> DashboardWorkspace:
    return shared_workspace(tmp_path_factory, release_dir)


@pytest.fixture
def local(built: DashboardWorkspace, tmp_path: Path, monkeypatch) -> DashboardWorkspace:
    """The workspace with a private copy of the registry, named by the dashboard's variables."""
    clone = built.clone(tmp_path / "registry")
    for name, value in clone.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LADNN_CONFIG", raising=False)
    monkeypatch.delenv("LADNN_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return clone


def sign_in(name: str, password: str) -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT)
    app.run()
    app.text_input(key="sign_in_name").input(name)
    app.text_input(key="sign_in_password").input(password)
    app.button[0].click().run()
    return app


def open_page(app: AppTest, page: str) -> AppTest:
    app.switch_page(f"pages/{page}.py")
    app.run()
    assert not app.exception, [item.message for item in app.exception]
    return app


def action_buttons(app: AppTest) -> list[str]:
    return [b.label for b in app.button if b.label.startswith(ACTION_LABELS)]


def registry_of(workspace: DashboardWorkspace):
    return open_registry(workspace.config(), Workspace.resolve(workspace.workspace))


def test_signed_out_sees_only_sign_in(local):
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT)
    app.run()
    assert not app.exception
    assert [title.value for title in app.title] == ["LA-DNN dashboard"]
    assert [button.label for button in app.button] == ["Sign in"]
    assert not app.metric


def test_wrong_password_is_rejected(local):
    app = sign_in("rita", "not-her-password")
    assert [error.value for error in app.error] == ["Unknown user name or wrong password."]
    assert [title.value for title in app.title] == ["LA-DNN dashboard"]
    assert "ladnn_user" not in app.session_state


def test_overview_shows_champion_and_challenger(local):
    app = sign_in("ana", PASSWORDS["ana"])
    assert not app.exception, [item.message for item in app.exception]
    assert app.title[0].value == "Overview"
    headings = [subheader.value for subheader in app.subheader]
    assert f"Champion: version {local.champion}" in headings
    assert f"Challenger: version {local.challenger}" in headings
    assert any("PREFECT_API_URL is not set" in info.value for info in app.info)
    assert [metric.label for metric in app.metric][:3] == ["Test AUC", "Sensitivity", "Specificity"]


def test_reviewer_retrain_button_disabled_without_prefect(local):
    app = sign_in("rita", PASSWORDS["rita"])
    button = app.button(key="retrain_start")
    assert button.disabled


def test_reviewer_starts_retraining_as_deployment_run(local, monkeypatch, tmp_path):
    """Against Prefect's test server with the served deployments: the button creates a run of
    `retrain/retrain`, shows its state, and then warns before a second one."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.serve import build_deployments

    with prefect_test_harness(server_startup_timeout=120):
        for deployment in build_deployments(str(tmp_path / "served")):
            deployment.apply()
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        app = sign_in("rita", PASSWORDS["rita"])
        assert not app.button(key="retrain_start").disabled

        app.button(key="retrain_start").click().run()

        assert not app.exception, [item.message for item in app.exception]
        states = [info.value for info in app.info if info.value.startswith("Flow run ")]
        assert states and "Scheduled" in states[0], [info.value for info in app.info]
        app.run()
        assert any("already under way" in warning.value for warning in app.warning)
        assert app.button(key="retrain_start").disabled


def test_analyst_has_no_action_buttons(local):
    app = sign_in("ana", PASSWORDS["ana"])
    assert action_buttons(app) == []
    for page in ("review", "compare", "diagnose", "dataset", "runs"):
        open_page(app, page)
        assert action_buttons(app) == [], page
        assert not app.text_area, page


def test_analyst_review_page_is_read_only(local):
    app = open_page(sign_in("ana", PASSWORDS["ana"]), "review")
    assert any("read-only access" in info.value for info in app.info)
    assert app.metric[0].value == f"version {local.champion}"
    assert app.metric[1].value == f"version {local.challenger}"
    assert len(app.dataframe) == 2


def test_reviewer_approves_after_confirmation(local):
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "review")
    events_before = len(registry_of(local).audit.events("ladnn"))

    app.button(key="review_approve").click().run()
    assert [error.value for error in app.error] == ["Enter a reason before deciding."]

    app.text_area(key="review_reason").input("better calibrated on the frozen test images")
    app.button(key="review_approve").click().run()
    assert app.button(key="review_confirm").disabled
    assert registry_of(local).champion() == local.champion

    app.checkbox(key="review_confirm_check").check().run()
    app.button(key="review_confirm").click().run()
    assert not app.exception, [item.message for item in app.exception]

    registry = registry_of(local)
    assert registry.champion() == local.challenger
    assert registry.challenger() is None
    events = registry.audit.events("ladnn")
    assert len(events) == events_before + 1
    assert events[-1].action == "promote"
    assert events[-1].reviewer == "rita"
    assert events[-1].reason == "better calibrated on the frozen test images"
    assert events[-1].to_version == local.challenger
    assert app.success[0].value == (
        f"Audit event #{events[-1].seq}: rita promoted version {local.challenger} to champion, "
        f"replacing version {local.champion}."
    )
    assert app.metric[0].value == f"version {local.challenger}"


def test_reviewer_cancel_keeps_champion(local):
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "review")
    app.text_area(key="review_reason").input("not convinced")
    app.button(key="review_reject").click().run()
    assert "Reject version" in app.warning[0].value
    app.button(key="review_cancel").click().run()
    registry = registry_of(local)
    assert registry.challenger() == local.challenger
    assert [event.action for event in registry.audit.events("ladnn")] == ["promote"]


def test_reviewer_rejects_then_rolls_back(local):
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "review")
    app.text_area(key="review_reason").input("sensitivity too low")
    app.button(key="review_reject").click().run()
    app.checkbox(key="review_confirm_check").check().run()
    app.button(key="review_confirm").click().run()
    registry = registry_of(local)
    assert registry.challenger() is None
    assert registry.client.get_model_version("ladnn", local.challenger).tags["review_state"] == (
        "rejected"
    )
    # The only champion event has no earlier champion, so there is nothing to roll back to.
    assert any("no earlier champion" in caption.value for caption in app.caption)
    assert not [b for b in app.button if b.label.startswith("Roll back")]


def test_reviewer_rolls_back_after_confirmation(local):
    registry = registry_of(local)
    registry.promote(local.challenger, reviewer="rita", reason="second champion")
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "review")

    app.button(key="rollback_rollback").click().run()
    assert "Enter a reason before rolling back." in [error.value for error in app.error]

    app.text_input(key="rollback_reason").input("false positives in the clinic")
    app.button(key="rollback_rollback").click().run()
    assert registry_of(local).champion() == local.challenger
    app.checkbox(key="rollback_confirm_check").check().run()
    app.button(key="rollback_confirm").click().run()
    assert not app.exception, [item.message for item in app.exception]

    registry = registry_of(local)
    event = registry.audit.events("ladnn")[-1]
    assert registry.champion() == local.champion
    assert event.action == "rollback"
    assert event.from_version == local.challenger
    assert event.to_version == local.champion
    assert event.reviewer == "rita"
    assert event.reason == "false positives in the clinic"


def test_compare_page_shows_report(local):
    app = open_page(sign_in("ana", PASSWORDS["ana"]), "compare")
    headers = [header.value for header in app.header]
    assert headers[:3] == ["Metrics", "Gates", "Per batch, source and negative subtype"]
    assert "Grad-CAM++ on the same test images" in headers
    subheaders = [subheader.value for subheader in app.subheader]
    for title in (
        "Per batch",
        "Per source (sources under 10 test images together)",
        "COVID against each negative subtype",
        "Confusion matrices at each model's frozen threshold",
        "Calibration",
    ):
        assert title in subheaders, subheaders
    # The metrics table and one table per slice list.
    assert len(app.dataframe) >= 4
    # The ROC, precision-recall and calibration charts.
    assert len(app.get("vega_lite_chart")) >= 3
    # Grad-CAM++ overlays (and the input slices) of both models.
    assert len(app.get("image")) >= 4
    assert any("DeLong" in markdown.value for markdown in app.markdown)
    assert app.selectbox[0].value == local.challenger
    gates = [markdown.value for markdown in app.markdown if "`max_auc_drop`" in markdown.value]
    assert gates and "PASS" in gates[0]


def test_diagnose_page_scores_and_names_bad_file(local, release_dir: Path):
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "diagnose")
    assert f"version {local.champion}" in app.markdown[0].value
    app.file_uploader[0].set_value(
        [
            ("slice.png", (release_dir / COVID_SLICE).read_bytes(), "image/png"),
            ("notes.png", b"these are meeting notes", "image/png"),
        ]
    )
    app.run()
    assert not app.exception, [item.message for item in app.exception]
    assert [metric.label for metric in app.metric] == ["COVID-19 probability"]
    assert 0.0 <= float(app.metric[0].value) <= 1.0
    assert len(app.error) == 1
    assert app.error[0].value.startswith("Could not score notes.png. notes.png: not an image")


def test_diagnose_contribution_needs_consent_and_label(local, release_dir: Path):
    app = open_page(sign_in("rita", PASSWORDS["rita"]), "diagnose")
    app.file_uploader[0].set_value(
        ("slice.png", (release_dir / COVID_SLICE).read_bytes(), "image/png")
    )
    app.run()
    assert app.button(key="contribute_submit").disabled
    app.radio(key="contribute_label").set_value("covid").run()
    assert app.button(key="contribute_submit").disabled
    app.checkbox(key="contribute_consent").check().run()
    app.button(key="contribute_submit").click().run()
    assert app.success, [error.value for error in app.error]
    folder = Path(app.success[0].value.removeprefix("Added 1 slice(s) to ").rstrip("."))
    assert folder.parent == local.workspace / "inbox"
    # The upload is stored under its content hash, never under the uploader's file name.
    row = (folder / "metadata.csv").read_text().splitlines()[1].split(",")
    assert re.fullmatch(r"[0-9a-f]{16}\.png", row[0])
    assert row[1] == "covid"
    assert (folder / row[0]).read_bytes() == (release_dir / COVID_SLICE).read_bytes()


def test_data_and_runs_pages_render(local):
    app = open_page(sign_in("ana", PASSWORDS["ana"]), "dataset")
    assert [header.value for header in app.header] == [
        "Dataset versions",
        "Validation results",
        "Quarantine",
        "Gallery",
    ]
    assert any("1 file(s) rejected" in markdown.value for markdown in app.markdown)
    assert len(app.get("image")) == 24
    open_page(app, "runs")
    assert app.title[0].value == "Runs"
    assert len(app.dataframe) == 1
