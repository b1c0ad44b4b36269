"""The studio in a real headless Chromium (Debian's package), driven by Playwright."""

import os
import shutil

import pytest

from tests.apphelpers import CHROMIUM, CHROMIUM_ARGS, running_app

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium in CI")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)


def set_number(page, label, value):
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    with running_app(tmp) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#pdd-run")
        page.browser_for_test = browser
        yield page, url, tmp
        browser.close()


def test_invalid_input_shows_its_message_and_disables_run(page_url):
    page, _, _ = page_url
    set_number(page, "Stages P", 2)
    set_number(page, "Total IPC", 3)
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('not divisible')")
    assert page.locator("#pdd-run").is_disabled()
    assert "Traceback" not in page.content()
    set_number(page, "Total IPC", 2)
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')")
    assert page.locator("#pdd-run").is_enabled()


def test_advanced_shows_only_the_chosen_methods_fields(page_url):
    first, url, _ = page_url
    page = first.browser_for_test.new_page(viewport={"width": 1400, "height": 1000})  # a fresh page: default method
    page.goto(url)
    page.wait_for_selector("#pdd-run")
    page.get_by_text("Advanced").click()
    page.get_by_label("Network width", exact=True).wait_for()
    assert page.get_by_label("MTT: experts", exact=True).count() == 0  # DM, the default, has no MTT fields
    page.get_by_label("Base method").first.click()
    page.get_by_role("option", name="MTT: trajectory matching").click()
    page.get_by_label("MTT: experts", exact=True).wait_for(timeout=30_000)
    page.close()


def test_run_shows_grid_and_plots_and_reattaches(page_url):
    page, url, tmp = page_url
    set_number(page, "Stages P", 2)
    set_number(page, "Total IPC", 2)
    page.get_by_text("Advanced").click()
    set_number(page, "Iterations per stage", 15)
    set_number(page, "Evaluation epochs per stage", 20)
    set_number(page, "Evaluation networks", 2)
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')")
    page.locator("#pdd-run").click()
    page.wait_for_selector("#pdd-grid img", timeout=120_000)  # the grid appears while the run goes on
    page.wait_for_function("document.querySelector('#pdd-status')?.innerText.includes('Done')", timeout=180_000)
    assert page.locator("#pdd-acc .js-plotly-plot").count() == 1
    legend = page.locator("#pdd-acc .legendtext").all_text_contents()  # SVG text: no innerText
    assert legend == ["PDD+DM", "DM alone (P=1)", "random real subset"], legend  # three curves
    assert "DM alone (P=1)" in page.locator("#pdd-status").inner_text()
    assert page.locator("#pdd-loss .js-plotly-plot").count() == 1
    assert "run=" in page.url
    shot = tmp / "studio.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("PDD_SCREENSHOT_DIR"):
        shutil.copy(shot, os.environ["PDD_SCREENSHOT_DIR"])
    # a second tab with the run id in the URL reattaches to the same run
    other = page.browser_for_test.new_page()
    other.goto(page.url)
    other.wait_for_function("document.querySelector('#pdd-status')?.innerText.includes('Done')", timeout=60_000)
    other.wait_for_selector("#pdd-grid img")
    other.close()
