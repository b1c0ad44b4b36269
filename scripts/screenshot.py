"""Take the README's screenshots in headless Chromium.

    python -m scripts.screenshot assets/          # the default (cpu-quick) run: studio_running.png, studio_done.png
    python -m scripts.screenshot assets/ --tour   # studio_data.png, studio_evaluate.png, studio_phone.png
"""

import sys
import tempfile
import time
from pathlib import Path

from tests.apphelpers import CHROMIUM, CHROMIUM_ARGS, running_app


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright

    out_dir = Path(out)
    with tempfile.TemporaryDirectory() as tmp, running_app(Path(tmp), PDD_ENGINE_THREADS="2") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1050})
        page.goto(url)
        page.wait_for_selector("#pdd-run:not([disabled])")
        t = time.time()
        page.locator("#pdd-run").click()
        page.wait_for_function(r"/stage [2-9]\/\d+: iteration [0-9]{2}/.test(document.querySelector('#pdd-status')?.innerText)",
                               timeout=600_000)
        page.screenshot(path=str(out_dir / "studio_running.png"))
        page.wait_for_function("document.querySelector('#pdd-status')?.innerText.includes('Done')", timeout=1_800_000)
        print(f"default run finished in {time.time() - t:.0f} s (click to Done)")
        print(page.locator("#pdd-status").inner_text())
        page.screenshot(path=str(out_dir / "studio_done.png"))
        browser.close()


def tour(out: str) -> None:
    """Before a run (the data panel, MTT's automatic fields), the Evaluate tab on a small bundle, and
    a phone-width page while a short run streams."""
    from playwright.sync_api import sync_playwright

    from pdd_engine import DistillConfig, distill
    from pdd_engine.cache import Store
    from pdd_engine.export import export_bundle

    out_dir = Path(out)
    with tempfile.TemporaryDirectory() as tmp, running_app(Path(tmp), PDD_ENGINE_THREADS="2") as url, sync_playwright() as p:
        cfg = DistillConfig.make(dict(stages=2, ipc=4, iterations=100, eval_epochs=100, eval_models=2, compare_base="off"))
        distill(cfg, Store(Path(tmp) / "bundle_cache"))
        bundle = export_bundle(cfg, Path(tmp) / "digits_dm_P2_ipc4.zip", Store(Path(tmp) / "bundle_cache"))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1050})
        page.goto(url)
        page.wait_for_selector("#pdd-data-grid img", timeout=120_000)
        page.get_by_label("Base method").first.click()
        page.get_by_role("option", name="MTT: trajectory matching").click()
        page.get_by_text("Advanced").click()
        page.wait_for_function("document.querySelector('[placeholder*=\"MTT\\'s default\"]') !== null", timeout=60_000)
        page.screenshot(path=str(out_dir / "studio_data.png"), full_page=True)
        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#pdd-ev-bundle input[type=file]").set_input_files(str(bundle))
        page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('DM on digits')", timeout=60_000)
        page.locator("#pdd-ev-archs input").fill("resnet-w16")
        page.keyboard.press("Enter")
        page.locator("#pdd-ev-epochs textarea").fill("100")
        page.locator("#pdd-ev-run-btn").click()
        page.wait_for_function("document.querySelector('#pdd-ev-msg')?.innerText.includes('Evaluated on')", timeout=1_800_000)
        page.screenshot(path=str(out_dir / "studio_evaluate.png"), full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.goto(url)
        phone.wait_for_selector("#pdd-run:not([disabled])")
        phone.locator("#pdd-run").click()
        phone.wait_for_function(r"/stage 2\/2: iteration [0-9]{2}/.test(document.querySelector('#pdd-status')?.innerText)",
                                timeout=600_000)
        phone.locator("#pdd-grid").scroll_into_view_if_needed()
        phone.wait_for_timeout(1000)
        phone.screenshot(path=str(out_dir / "studio_phone.png"))
        phone.locator("#pdd-stop").click()
        browser.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    (tour if "--tour" in sys.argv else main)(args[0] if args else "assets")
