"""The studio in a real headless Chromium (Debian's package), driven by Playwright."""

import os
import shutil
import zipfile

import pytest

from tests.apphelpers import CHROMIUM, CHROMIUM_ARGS, running_app, tampered_copy

pytestmark = pytest.mark.browser

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
    lr = page.get_by_role("textbox", name="Image learning rate")
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')")
    assert lr.input_value() == "" and "3 (DM's default)" in lr.get_attribute("placeholder")  # the real default
    assert "2 (for 8 px)" in page.get_by_role("textbox", name="Network depth").get_attribute("placeholder")
    page.get_by_label("Base method").first.click()
    page.get_by_role("option", name="MTT: trajectory matching").click()
    page.get_by_label("MTT: experts", exact=True).wait_for(timeout=30_000)
    assert page.get_by_label("DM: pool of transitioned networks (stage 2 on)", exact=True).count() == 0
    page.wait_for_function("document.querySelector('[placeholder*=\"MTT\\'s default\"]') !== null", timeout=30_000)
    assert "100 (MTT's default)" in lr.get_attribute("placeholder")
    assert "12 (the 12 steps" in page.get_by_role("textbox", name="MTT: unrolled steps").get_attribute("placeholder")
    page.close()


def test_dataset_preview_for_digits_and_for_an_uploaded_zip(page_url, tmp_path):
    from tests.test_service import sized_zip
    from tests.test_userdata import make_folder

    first, url, _ = page_url
    page = first.browser_for_test.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#pdd-data-grid img", timeout=60_000)  # before any run
    assert "1,438 train / 359 test" in page.locator("#pdd-data-facts").inner_text()
    folder = make_folder(tmp_path / "pets", n=5)
    z = tmp_path / "pets.zip"
    shutil.make_archive(str(z.with_suffix("")), "zip", folder)
    page.get_by_label("Dataset").first.click()
    page.get_by_role("option", name="upload your own (.zip)").click()
    page.wait_for_function("document.querySelector('#pdd-data-facts')?.innerText.includes('Upload a .zip')")
    page.locator("input[type=file]").first.set_input_files(str(z))
    page.wait_for_function("document.querySelector('#pdd-data-facts')?.innerText.includes('3 classes')", timeout=60_000)
    page.wait_for_selector("#pdd-data-grid img")
    assert str(tmp_path) not in page.content()  # the server's copy of the upload is never named
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')", timeout=60_000)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("cats/0.png", b"not an image")
        z.writestr("dogs/0.png", b"not an image either")
    page.get_by_role("button", name="Clear").first.click()  # the file box takes a new file once cleared
    page.locator("input[type=file]").first.set_input_files(str(broken))
    page.wait_for_function("document.querySelector('#pdd-data-facts')?.innerText.includes('Fix')", timeout=60_000)
    # the line under the controls comes to say the same (the Clear before the upload had its own line, "no
    # dataset file was uploaded", which can still be showing when the panel already names the broken file)
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('broken.zip')", timeout=60_000)
    page.wait_for_selector("#pdd-run[disabled]", timeout=60_000)
    warned = lambda sel: page.locator(sel).inner_text().partition("⚠")[2].strip()  # noqa: E731 (past a progress timer)
    assert warned("#pdd-validation") == warned("#pdd-data-facts") != "" and "valid" not in warned("#pdd-data-facts")
    mixed = sized_zip(tmp_path / "mixed.zip", [16, 24])  # needs Image size: panel and line follow the box
    page.get_by_role("button", name="Clear").first.click()
    page.locator("input[type=file]").first.set_input_files(str(mixed))
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('mixed sizes')", timeout=60_000)
    page.get_by_role("button", name="Advanced").click()
    page.get_by_role("textbox", name="Image size in pixels").fill("16")
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')", timeout=60_000)
    page.wait_for_selector("#pdd-data-grid img", timeout=60_000)
    assert "16 px" in page.locator("#pdd-data-facts").inner_text() or "16x16" in page.locator("#pdd-data-facts").inner_text()
    page.close()


def test_evaluate_tab_evaluates_a_bundle_on_two_architectures_and_refuses_a_bad_one(page_url, tmp_path, tiny, store):
    from pdd_engine import distill
    from pdd_engine.export import export_bundle

    cfg = tiny(stages=2, ipc=2)
    distill(cfg, store)
    bundle = export_bundle(cfg, tmp_path / "run.zip", store)
    first, url, _ = page_url
    page = first.browser_for_test.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#pdd-run")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#pdd-ev-bundle input[type=file]").set_input_files(str(bundle))
    page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('DM on digits')", timeout=60_000)
    set_number(page, "Networks per architecture", 1)
    page.locator("#pdd-ev-epochs textarea").fill("2")
    page.locator("#pdd-ev-run-btn").click()
    page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('Evaluated on 2')", timeout=180_000)
    table = page.locator("#pdd-ev-table").inner_text()
    assert "recorded in the bundle" in table and "same as exported" in table and "convnet-w64" in table
    assert page.locator("#pdd-ev-plot .js-plotly-plot").count() == 1
    notzip = tmp_path / "notes.zip"
    notzip.write_text("not a bundle")
    page.locator("#pdd-ev-bundle button[aria-label*='Clear'], #pdd-ev-bundle button[aria-label*='clear']").first.click()
    page.locator("#pdd-ev-bundle input[type=file]").set_input_files(str(notzip))
    page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('not a zip file')", timeout=60_000)
    msg = page.locator("#pdd-ev-msg").inner_text().strip()
    assert "Fix:" in msg and "\n" not in msg and "Traceback" not in page.content()
    tampered = tampered_copy(bundle, tmp_path / "tampered.zip")  # its manifest's shape is checked before use
    page.locator("#pdd-ev-bundle button[aria-label*='Clear'], #pdd-ev-bundle button[aria-label*='clear']").first.click()
    page.locator("#pdd-ev-bundle input[type=file]").set_input_files(str(tampered))
    page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('malformed')", timeout=60_000)
    msg = page.locator("#pdd-ev-msg").inner_text().strip()
    assert "Fix:" in msg and "\n" not in msg and "Traceback" not in page.content()
    page.close()


def test_keyboard_alone_starts_and_stops_a_run(page_url):
    first, url, _ = page_url
    page = first.browser_for_test.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#pdd-run:not([disabled])")
    page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')")
    for _ in range(80):  # Tab through the page's controls, in order, until Run has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement?.id") == "pdd-run":
            break
    else:
        raise AssertionError("Run cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_function("/Running|Starting|Queued/.test(document.querySelector('#pdd-status')?.innerText)",
                           timeout=60_000)
    page.wait_for_selector("#pdd-stop:not([disabled])")
    page.keyboard.press("Tab")  # Stop comes next
    assert page.evaluate("document.activeElement?.id") == "pdd-stop"
    page.keyboard.press("Enter")
    page.wait_for_function("/Stopped|Stopping/.test(document.querySelector('#pdd-status')?.innerText + "
                           "document.querySelector('#pdd-validation')?.innerText)", timeout=60_000)
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
    assert page.locator("#pdd-grid span[title]").first.get_attribute("title") == "stage 1 · class 0 · image 1"
    page.wait_for_function("document.querySelector('#pdd-status')?.innerText.includes('Done')", timeout=180_000)
    assert page.locator("#pdd-acc .js-plotly-plot").count() == 1
    legend = page.locator("#pdd-acc .legendtext").all_text_contents()  # SVG text: no innerText
    assert legend == ["PDD+DM", "DM alone (P=1)", "DM alone, trained as long as PDD", "random real subset"], legend
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


def test_phone_width_keeps_run_and_status_on_screen(page_url, tmp_path):
    """390 px: the run bar (status, Run, Stop) stays on screen while the grid and curves are scrolled."""
    first, url, _ = page_url
    page = first.browser_for_test.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    page.goto(first.url if "run=" in first.url else url)  # the finished run from the test above, if any
    page.wait_for_selector("#pdd-run")
    page.mouse.wheel(0, 4000)
    page.wait_for_timeout(500)
    for element in ("#pdd-run", "#pdd-status"):
        box = page.locator(element).bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 844, (element, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    shot = tmp_path / "studio_phone.png"
    page.screenshot(path=str(shot))
    if os.environ.get("PDD_SCREENSHOT_DIR"):
        shutil.copy(shot, os.environ["PDD_SCREENSHOT_DIR"])
    page.close()


def test_runs_tab_lists_compares_and_asks_before_deleting(page_url):
    page, _, _ = page_url  # the run of test_run_shows_grid_and_plots_and_reattaches is this browser's
    page.get_by_role("tab", name="Runs").click()
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_function("!document.querySelector('#pdd-runs-empty')?.innerText.includes('No finished runs')")
    page.get_by_label("Select runs").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("#pdd-compare .js-plotly-plot .scatterlayer .trace")
    page.locator("#pdd-delete").click()
    page.wait_for_function("document.querySelector('#pdd-runs-msg')?.innerText.includes('Delete 1 run record(s)')")
    page.locator("#pdd-delete-cancel").click()  # nothing is deleted without the second click
    page.wait_for_selector("#pdd-delete-confirm", state="hidden")
    assert "No finished runs" not in page.locator("#pdd-runs-empty").inner_text()
    page.locator("#pdd-delete").click()
    page.locator("#pdd-delete-confirm").click()
    page.wait_for_function("document.querySelector('#pdd-runs-msg')?.innerText.includes('Deleted 1')")
    page.wait_for_function("document.querySelector('#pdd-runs-empty')?.innerText.includes('No finished runs yet')")
