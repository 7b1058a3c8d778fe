"""The reviewer's view, in a real browser: the Prefect UI of the test server shows a paused gate's form, with
the review page (plot embedded) above the fields, and the gate's review artifact.

Uses Debian's chromium and chromium-driver (``make test`` installs them when missing), headless.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from lrgate.core.config import load_config
from tests.conftest import tiny_config
from tests.test_gates import MANUAL, finish, lrgate, start, waiting

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver: `make test` installs them"
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # Offline machine: no background connections (they would be refused, many at a time).
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in driver.page_source:
        assert time.monotonic() < deadline, f"{text!r} did not appear on {driver.current_url}"
        time.sleep(0.5)


def form_field(driver, label: str):
    """The input (a text box, or a native select) of the Resume form's field titled ``label``."""
    from selenium.webdriver.common.by import By

    prop = (
        "//div[contains(concat(' ', @class, ' '), ' schema-form-property ')]"
        f"[.//span[contains(@class, 'schema-form-property__label')][starts-with(normalize-space(.), '{label}')]]"
    )
    return driver.find_element(By.XPATH, f"{prop}//*[self::textarea or self::select or self::input][1]")


def sideways_scrollers(driver) -> list[str]:
    """Elements of the review page on the Resume form (its markdown) that are wider than their box, and scroll."""
    return driver.execute_script(
        """
        const bad = [];
        for (const e of document.querySelectorAll('.markdown-renderer, .markdown-renderer *')) {
          const x = getComputedStyle(e).overflowX;
          if ((x === 'auto' || x === 'scroll') && e.scrollWidth > e.clientWidth + 1)
            bad.push(e.tagName + ': ' + e.textContent.slice(0, 60));
        }
        return bad;
        """
    )


def open_resume_form(driver, ui: str, run_id: str, gate: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{ui}/runs/flow-run/{run_id}")
    wait_for(driver, "Paused")
    resume = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Resume"]
    assert resume, "no Resume button on the paused run's page"
    resume[0].click()
    wait_for(driver, f"Review gate {gate}")


def test_an_lr_typed_in_scientific_notation_in_the_ui_form_is_what_train_frozen_trains_with(
    prefect_api, tmp_path, browser
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ui = prefect_api.removesuffix("/api")
    run_dir = tmp_path / "run"
    proc = start(tiny_config(tmp_path, MANUAL, race=True), run_dir)
    gate1 = waiting(run_dir, "frozen", proc)
    open_resume_form(browser, ui, gate1["run_id"], "frozen")
    time.sleep(1)
    shots = Path(os.environ.get("LRGATE_SCREENSHOTS", tmp_path))
    browser.save_screenshot(str(shots / "approve-lr.png"))
    # Readable at a glance: nothing in the form scrolls sideways (the race, the choices, the file paths)
    assert sideways_scrollers(browser) == []
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.PARTIAL_LINK_TEXT, "full width")]
    assert links and "/artifacts/artifact/" in links[0], "no link to the review page at full width"
    form_field(browser, "Lr").send_keys("3e-3")
    assert form_field(browser, "Lr").get_attribute("value") == "3e-3"  # not "3-3", as a number input made it
    choice = Select(form_field(browser, "Choice"))
    assert choice.first_selected_option.text.endswith("(suggestion)")  # a default, never "None"
    assert len(choice.options) > 1  # the race's candidates too
    form_field(browser, "Reviewer").send_keys("uma")
    Select(form_field(browser, "Decision")).select_by_visible_text("override")
    submit = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"]
    submit[-1].click()

    gate2 = waiting(run_dir, "unfrozen", proc)
    assert lrgate("approve", gate2["run_id"]).returncode == 0
    code, log = finish(proc)
    assert code == 0, log[-2000:]
    decision = json.loads((run_dir / "gate-frozen" / "decision.json").read_text())
    assert (decision["action"], decision["reviewer"], decision["value"]) == ("override", "uma", 0.003)
    assert json.loads((run_dir / "metrics-train-frozen.json").read_text())["fit_lr"] == 0.003


def test_the_ui_shows_the_paused_gates_form_and_review_artifact(prefect_api, tmp_path, browser):
    from selenium.webdriver.common.by import By

    ui = prefect_api.removesuffix("/api")
    shots = Path(os.environ.get("LRGATE_SCREENSHOTS", tmp_path))
    run_dir, config = tmp_path / "run", tiny_config(tmp_path, MANUAL)
    proc = start(config, run_dir)
    gate1 = waiting(run_dir, "frozen", proc)
    assert lrgate("approve", gate1["run_id"]).returncode == 0
    gate2 = waiting(run_dir, "unfrozen", proc)

    open_resume_form(browser, ui, gate2["run_id"], "unfrozen")
    for label in ("Reviewer", "Decision", "Slice Lo", "Slice Hi", "Reason"):
        assert label in browser.page_source
    images = [i.get_attribute("src") or "" for i in browser.find_elements(By.TAG_NAME, "img")]
    assert any(src.startswith("data:image/png;base64,") for src in images), "the review plot is not on the form"
    browser.save_screenshot(str(shots / "approve-slice.png"))

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{load_config(config).name}-gate-unfrozen"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[gate2["run_id"]]),
            )
        )
    browser.get(f"{ui}/artifacts/artifact/{artifact.id}")
    wait_for(browser, "Gate 2 (unfrozen) of run")
    time.sleep(2)
    browser.save_screenshot(str(shots / "gate-artifact.png"))
    assert "suggestion: slice(" in browser.page_source  # the choices table
    images = [i.get_attribute("src") or "" for i in browser.find_elements(By.TAG_NAME, "img")]
    assert any(src.startswith("data:image/png;base64,") for src in images), "the plot is not in the artifact"

    assert lrgate("approve", gate2["run_id"], "--slice", "1e-6,1e-4").returncode == 0
    code, log = finish(proc)
    assert code == 0, log[-2000:]
