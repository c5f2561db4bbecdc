"""The HTML report in a real browser: headless Chromium driven by selenium.

Opens the one-file report (``tests/report_demo.py``), checks the page logs no errors, that the
attention viewer redraws when the head changes and when a token is hovered, that the two
snapshots can be compared and toggled, and that a screenshot is not blank.

Skips, saying why, without selenium, chromium or chromedriver (Debian: ``apt-get install
chromium chromium-driver``; ``pip install selenium``, the ``dev`` extra). No network is used:
the driver is given by path, so selenium never fetches one.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from report_demo import write_demo_report

CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--window-size=1280,1000")


def _find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def driver():  # type: ignore[no-untyped-def]
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException

    browser = _find("chromium", "chromium-browser", "google-chrome")
    chromedriver = _find("chromedriver")
    if browser is None or chromedriver is None:
        pytest.skip("chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    except WebDriverException as error:
        pytest.skip(f"headless chromium did not start: {str(error).splitlines()[0]}")
    yield chrome
    chrome.quit()


def _tokens(driver, panel: int) -> list[str]:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.attn-panel')[arguments[0]]"
        ".querySelectorAll('.attn-tok')).map(s => s.style.background);", panel)


def _heatmap(driver) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script("return document.querySelector('.attn-heat').toDataURL();")


def test_the_attention_viewer_works_in_a_browser(driver, isolated_results: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    report = write_demo_report(isolated_results, tmp_path / "site")
    shutil.rmtree(isolated_results)  # the file must stand alone
    driver.get(report.as_uri())
    viewer = driver.find_element(By.CSS_SELECTOR, ".attn-viewer")
    assert viewer.get_attribute("data-state") == "0,0,6,0,1"  # layer, head, query, left, right
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, f"console errors: {severe}"
    panels = driver.find_elements(By.CSS_SELECTOR, ".attn-panel")
    assert [p.get_attribute("data-snapshot") for p in panels] == ["before", "after"]

    before_tokens, before_map = _tokens(driver, 1), _heatmap(driver)
    _layer, head, left, right = (Select(s) for s in viewer.find_elements(By.TAG_NAME, "select"))
    head.select_by_index(2)
    assert viewer.get_attribute("data-state") == "0,2,6,0,1"
    assert _tokens(driver, 1) != before_tokens and _heatmap(driver) != before_map, "no redraw after the head changed"
    assert "head 2" in panels[0].find_element(By.CSS_SELECTOR, ".attn-caption").text

    on_last = _tokens(driver, 1)
    first = panels[1].find_elements(By.CSS_SELECTOR, ".attn-tok")[0]
    ActionChains(driver).move_to_element(first).perform()
    assert viewer.get_attribute("data-state") == "0,2,0,0,1"
    assert _tokens(driver, 1) != on_last, "hovering a token did not change the highlights"
    assert "attn-query" in first.get_attribute("class")

    driver.execute_script("arguments[0].scrollIntoView();", viewer)
    png = viewer.screenshot_as_png
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    colours = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7].round(3).tolist()}
    assert len(colours) > 10, f"the viewer's screenshot is (nearly) blank: {len(colours)} colours"

    right.select_by_visible_text("(none)")  # toggle: one snapshot only
    assert len(driver.find_elements(By.CSS_SELECTOR, ".attn-panel")) == 1
    left.select_by_visible_text("after")
    assert driver.find_element(By.CSS_SELECTOR, ".attn-panel").get_attribute("data-snapshot") == "after"
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
