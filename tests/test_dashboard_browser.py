"""The dashboard end to end in headless Chromium: `ladnn dashboard` serves it on a free local port.

Playwright drives the Debian Chromium at /usr/bin/chromium and never downloads a browser. Every
request to a host other than the local server is blocked and fails the test. A screenshot of each
page goes to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from dashboard_workspace import PASSWORDS, DashboardWorkspace, shared_workspace

from ladnn.registry.workflow import open_registry
from ladnn.workspace import Workspace

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
# Elements may still render after a script run ends (charts, images): checks wait up to a minute.
expect.set_options(timeout=60_000)

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
COVID_SLICE = "CT_COVID/2020.01.24.919183-p27-132.png"
SERVER_START_SECONDS = 90
# Milliseconds a page may take to finish a run; the first Compare run loads and scores two models.
PAGE_TIMEOUT_MS = 180_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the dashboard exited with {process.returncode}: {log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer from {url}/_stcore/health after {SERVER_START_SECONDS} s")


def _start_dashboard(workspace: DashboardWorkspace, port: int, log: Path) -> subprocess.Popen:
    """Run `ladnn dashboard` on the workspace's private registry, with no Prefect server."""
    environment = {**os.environ, "LADNN_DASHBOARD_USERS": str(workspace.users_file)}
    environment.pop("PREFECT_API_URL", None)
    settings = [
        item
        for setting in [*workspace.overrides, *workspace.extra_overrides]
        for item in ("--set", setting)
    ]
    command = [
        sys.executable,
        "-m",
        "ladnn.cli",
        "--workspace",
        str(workspace.workspace),
        *settings,
        "dashboard",
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
    ]
    with log.open("w") as output:
        # A session of its own, so stopping its process group stops the Streamlit child too.
        return subprocess.Popen(
            command,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory, release_dir: Path):
    """Serve the dashboard on a free port; yield its URL and workspace, then stop it."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    built = shared_workspace(tmp_path_factory, release_dir)
    workspace = built.clone(tmp_path_factory.mktemp("browser-registry"))
    log = tmp_path_factory.mktemp("browser-server") / "dashboard.log"
    port = _free_port()
    process = _start_dashboard(workspace, port, log)

    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process, log)
        yield url, workspace
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    """A fresh browser session (no shared sign-in) that blocks requests to other hosts."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    blocked: list[str] = []

    def only_local(route) -> None:
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    tab.route("**/*", only_local)
    yield tab
    context.close()
    assert blocked == [], f"the dashboard requested other hosts: {blocked}"


def settle(tab) -> None:
    """Wait until the Streamlit script run that the last action started has finished.

    The app's `data-test-script-state` attribute is "running" while a script runs. The status
    widget cannot be used, because `ladnn dashboard` starts Streamlit with the minimal toolbar,
    which does not show it.
    """
    tab.wait_for_timeout(800)
    running = tab.locator('[data-testid="stApp"][data-test-script-state="running"]')
    expect(running).to_have_count(0, timeout=PAGE_TIMEOUT_MS)


def screenshot(tab, name: str) -> None:
    """Save the whole page: the viewport grows to the height of Streamlit's scrolling main area."""
    settle(tab)
    height = tab.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    tab.set_viewport_size({"width": 1400, "height": max(1000, min(int(height), 6000))})
    tab.wait_for_timeout(1000)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    tab.set_viewport_size({"width": 1400, "height": 1000})


def sign_in(tab, url: str, name: str) -> None:
    tab.goto(url)
    tab.get_by_label("User name").fill(name)
    tab.get_by_label("Password", exact=True).fill(PASSWORDS[name])
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("heading", name="Overview")).to_be_visible()
    settle(tab)


def open_page(tab, title: str) -> None:
    tab.get_by_role("link", name=title, exact=True).click()
    expect(tab.get_by_role("heading", name=title, exact=True).first).to_be_visible()
    settle(tab)


def test_reviewer_approves_challenger(page, served):
    url, workspace = served
    sign_in(page, url, "rita")
    expect(page.get_by_text(f"Champion: version {workspace.champion}")).to_be_visible()
    expect(page.get_by_text(f"Challenger: version {workspace.challenger}")).to_be_visible()
    screenshot(page, "overview")

    open_page(page, "Compare")
    expect(page.get_by_role("heading", name="Grad-CAM++ on the same test images")).to_be_visible()
    screenshot(page, "compare")
    approve = page.get_by_role("button", name=f"Approve version {workspace.challenger}")
    page.get_by_label(f"Reason for the decision on version {workspace.challenger}").fill(
        "higher AUC on the frozen test images; gates passed"
    )
    approve.click()
    confirm = page.get_by_role("button", name="Confirm decision")
    expect(confirm).to_be_disabled()
    page.get_by_text("I have checked this decision and want to apply it").click()
    expect(confirm).to_be_enabled()
    confirm.click()
    expect(
        page.get_by_text(
            f"Audit event #2: rita promoted version {workspace.challenger} to champion, "
            f"replacing version {workspace.champion}."
        )
    ).to_be_visible()
    screenshot(page, "compare-approved")

    open_page(page, "Review")
    expect(page.get_by_test_id("stMetricValue").first).to_have_text(
        f"version {workspace.challenger}"
    )
    audit = page.get_by_test_id("stDataFrame").last
    expect(audit).to_contain_text("higher AUC on the frozen test images; gates passed")
    expect(audit).to_contain_text("rita")
    screenshot(page, "review")


def test_analyst_sees_no_approve_button(page, served):
    url, _ = served
    sign_in(page, url, "ana")
    for title in ("Review", "Compare"):
        open_page(page, title)
        expect(page.get_by_role("button", name="Approve", exact=False)).to_have_count(0)
        expect(page.get_by_role("button", name="Reject", exact=False)).to_have_count(0)
        expect(page.get_by_text("read-only access").first).to_be_visible()
        screenshot(page, f"{title.lower()}-analyst")
    for title, name in (("Runs", "runs"), ("Data", "data")):
        open_page(page, title)
        screenshot(page, name)


def test_diagnose_scores_slice_and_reports_bad_file(page, served, release_dir, tmp_path):
    url, workspace = served
    broken = tmp_path / "broken.png"
    broken.write_text("this text file only pretends to be a PNG image\n")
    sign_in(page, url, "rita")
    open_page(page, "Diagnose")
    page.locator("input[type=file]").set_input_files([str(release_dir / COVID_SLICE), str(broken)])
    settle(page)
    expect(page.get_by_text("COVID-19 probability")).to_be_visible()
    value = page.get_by_test_id("stMetricValue").first.inner_text()
    assert 0.0 <= float(value) <= 1.0
    expect(page.get_by_text("Could not score broken.png. broken.png: not an image")).to_be_visible()
    champion = open_registry(workspace.config(), Workspace.resolve(workspace.workspace)).champion()
    expect(page.get_by_text(f"ladnn version {champion}").first).to_be_visible()
    screenshot(page, "diagnose")
