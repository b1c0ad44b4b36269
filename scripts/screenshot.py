"""Take the README's screenshots: the default (cpu-quick) run in headless Chromium.

    .venv/bin/python scripts/screenshot.py assets/   # writes studio_running.png, studio_done.png
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.apphelpers import CHROMIUM, CHROMIUM_ARGS, running_app  # noqa: E402


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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "assets")
