"""The web page in a real browser: Playwright driving Debian's chromium (skipped with the reason without it).
A screenshot is kept in runs/test-artifacts/cluster_page.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cluster.service.conftest import A, Api, py

ARTIFACTS = Path(__file__).resolve().parents[3] / "runs" / "test-artifacts"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the cluster-test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        except Exception as exc:  # a chromium this Playwright cannot drive
            pytest.skip(f"chromium at {chromium} did not start under Playwright: {str(exc).splitlines()[0]}")
        yield b
        b.close()


def test_page_shows_queue_jobs_nodes_and_cancels_and_submits(service, browser):
    api = Api(service.url, A)
    done = api.submit(id="finished", name="finished one", kind="command", argv=py("print('the log line')"))
    api.wait(done, "succeeded")
    running = api.submit(id="sleeper", kind="command", gpus=2, argv=py("import time; time.sleep(60)"))
    api.wait(running, "running")
    waiting = api.submit(id="waiter", kind="command", gpus=2, argv=py("print(1)"))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(service.url + "/")
    page.fill("#token", A)
    page.click("#login")
    page.wait_for_selector("#who:has-text('team a')")
    page.wait_for_selector("#queue tbody tr:has-text('waiter')")
    assert "1" in page.inner_text("#queue tbody tr:has-text('waiter') td:first-child")
    assert "running" in page.inner_text("#jobs tbody tr:has-text('sleeper')")
    assert "succeeded" in page.inner_text("#jobs tbody tr:has-text('finished')")
    assert "2/2" in page.inner_text("#nodes tbody")
    page.click("a[data-job='finished']")  # the job panel: transitions and log tail
    page.wait_for_selector("#log:has-text('the log line')")
    assert "succeeded" in page.inner_text("#transitions")
    page.fill("#jobtoml", 'kind = "command"\nid = "from-the-page"\nargv = ["true"]\n')
    page.click("#submit")
    page.wait_for_selector("#submitted:has-text('from-the-page')")
    page.click("button[data-cancel='sleeper']")
    api.wait(running, "cancelled")
    api.wait("from-the-page", "succeeded")
    page.wait_for_selector("#jobs tbody tr:has-text('sleeper') .cancelled")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cluster_page.png"), full_page=True)
    page.fill("#token", "wrong")
    page.click("#login")
    page.wait_for_selector("#msg:has-text('401')")
    api.post(f"/api/jobs/{waiting}/cancel")
