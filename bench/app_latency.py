"""How fast the studio answers, and what it adds to a run: rows of ``bench/results/speed.csv``.

- **start**: ``python app.py`` until ``GET /`` answers 200, with a fresh cache (``--repeats`` times);
- **control change**: the studio's check (validation and estimate, through the service's helper process)
  called in this process as the page's change event calls it, cold and warm;
- **default run**: the default settings from a fresh cache, once in the CLI (``pdd distill``, its wall
  time) and once in the studio (headless Chromium: click Run, wait for Done), back to back on the same
  machine; the ratio is what the studio adds. Beside each wall, the CPU seconds each party used: the CLI's;
  the studio's server, the engine processes it started, and the browser (with its driver), read from /proc;
- **idle**: the CPU the server and an open page use per 10 s with no run (what they take from every run).

    python -m bench.app_latency
    python -m bench.app_latency --only run --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, append_row, cli_default_run, commit, machine, machine_line, now

COLUMNS = ["section", "row", "figures", "tiny", "machine", "commit", "date"]  # speed.csv's
CSV = RESULTS / "speed.csv"
# how often the harness reads the page: Playwright's default, every animation frame, made the browser lay the
# page out 60 times a second, counted to the studio (0.85 s of a run's browser CPU in requestAnimationFrame)
WATCH_MS = 250


def start_to_first_page(repeats: int) -> dict:
    from tests.apphelpers import running_app

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            with running_app(Path(tmp)):
                out.append(time.perf_counter() - t)
    return {"mean_s": sum(out) / len(out), "min_s": min(out), "max_s": max(out), "repeats": len(out)}


def control_change() -> dict:
    from app.studio import Studio
    from pdd_engine.service import Service

    tmp = Path(tempfile.mkdtemp())
    service = Service(tmp / "cache")
    t = time.perf_counter()
    studio = Studio(service)  # starts the helper and reads the schema
    start = time.perf_counter() - t
    token = "0" * 16
    names = [f["name"] for f in studio.fields]

    def timed(**kw) -> float:
        values = studio.control_values()
        for name, value in kw.items():
            values[6 + names.index(name)] = value
        t = time.perf_counter()
        studio.check(None, token, *values)
        return time.perf_counter() - t
    out = {"helper_start_and_schema_s": start, "first_change_s": timed()}
    time.sleep(5)  # the default network's timing, begun by the first change, is done
    out.update(same_shape_s=timed(iterations=300), new_width_s=timed(width=64), invalid_s=timed(eval_models=0))
    service.shutdown()
    return out


def processes() -> dict[int, tuple[int, float, float, str]]:
    """Every live process: pid -> (parent pid, CPU seconds it used, CPU seconds its reaped children used,
    command line)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        f = stat[stat.rindex(")") + 2:].split()  # fields from the state on (the command may hold spaces)
        out[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick, (int(f[13]) + int(f[14])) / tick, cmd)
    return out


def cpu_by_party() -> dict[str, float]:
    """CPU seconds so far of this process's descendants, by party: the studio's server, the processes the
    server started (the engine's, the helper), and the rest (the browser and its driver). Each second is
    counted once: a live process's own, a finished one's in its parent's reaped children. A process the
    server reaped was one it started, so the server's reaped children count to the engine's party (an
    engine process that ended with its run had its whole run counted to the server before)."""
    procs, me = processes(), os.getpid()

    def chain(pid: int) -> list[int]:
        out = []
        while pid in procs and pid > 1:
            out.append(pid)
            pid = procs[pid][0]
        return out
    server = next((pid for pid, (*_, cmd) in procs.items() if "app.py" in cmd and me in chain(pid)), None)
    parties = {"server": 0.0, "engine": 0.0, "browser": 0.0}
    for pid, (_, own, reaped, _) in procs.items():
        up = chain(pid)
        if me not in up[1:]:
            continue
        if pid == server:
            parties["server"] += own
            parties["engine"] += reaped
        else:
            parties["engine" if server in up else "browser"] += own + reaped
    return parties


@contextlib.contextmanager
def studio_page(tmp: Path, threads: int = 0):
    """The studio's page in headless Chromium, loaded and validated; ``threads``: the engine's
    (PDD_ENGINE_THREADS, 0: the studio's own choice)."""
    from playwright.sync_api import sync_playwright

    from tests.apphelpers import CHROMIUM, CHROMIUM_ARGS, running_app

    with running_app(tmp, PDD_ENGINE_THREADS=str(threads)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#pdd-run:not([disabled])")
        page.wait_for_function("document.querySelector('#pdd-validation')?.innerText.includes('valid')",
                               polling=WATCH_MS)
        try:
            yield page
        finally:
            browser.close()


def studio_run(tmp: Path, threads: int = 0) -> dict:
    """Click to Done, and the CPU each party used meanwhile."""
    with studio_page(tmp, threads) as page:
        before, t = cpu_by_party(), time.perf_counter()
        page.locator("#pdd-run").click()
        page.wait_for_function("document.querySelector('#pdd-status')?.innerText.includes('Done')",
                               timeout=3_600_000, polling=WATCH_MS)
        took, after = time.perf_counter() - t, cpu_by_party()
    return {"wall_s": took, **{f"{k}_cpu_s": after[k] - before[k] for k in after}}


def idle(seconds: float = 30) -> dict:
    """CPU seconds each party uses per 10 s with the page open and no run: what the server and one open
    tab take from the engine's cores between runs (and beside every run)."""
    with tempfile.TemporaryDirectory() as b, studio_page(Path(b)) as page:
        page.wait_for_timeout(5_000)  # the page's load events (preview, runs, results) are done
        before = cpu_by_party()
        page.wait_for_timeout(seconds * 1000)
        after = cpu_by_party()
    return {f"{k}_cpu_s_per_10s": (after[k] - before[k]) * 10 / seconds for k in ("server", "engine", "browser")}


def default_run(repeats: int, threads: int = 0) -> dict:
    """The default run from a fresh cache: the CLI's wall, then the studio's click to Done, alternating."""
    cli, studio = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as b:
            cli.append(cli_default_run())
            studio.append(studio_run(Path(b), threads))
            print("cli", json.dumps(cli[-1]), "studio", json.dumps(studio[-1]), flush=True)
    best_cli, best_studio = min(cli, key=lambda r: r["wall_s"]), min(studio, key=lambda r: r["wall_s"])
    return {"cli_s": best_cli["wall_s"], "studio_s": best_studio["wall_s"],
            "studio_over_cli": best_studio["wall_s"] / best_cli["wall_s"], "cli_cpu_s": best_cli["cpu_s"],
            **{f"studio_{k}": v for k, v in best_studio.items() if k.endswith("_cpu_s")},
            "cli_all_s": [r["wall_s"] for r in cli], "studio_all_s": [r["wall_s"] for r in studio],
            "engine_threads": threads or "studio default"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", type=lambda v: v.split(","), default=["start", "control", "idle", "run"])
    ap.add_argument("--results", type=Path, default=CSV)
    ap.add_argument("--engine-threads", type=int, default=0,
                    help="the studio engine's torch threads (PDD_ENGINE_THREADS; default 0: the studio's own choice)")
    args = ap.parse_args()
    line, sha = machine_line(machine()), commit()
    sections = {"start": lambda: start_to_first_page(args.repeats), "control": control_change, "idle": idle,
                "run": lambda: default_run(args.repeats, args.engine_threads)}
    for name in args.only:
        figures = sections[name]()
        append_row(args.results, COLUMNS, {"section": "app_latency", "row": name, "figures": json.dumps(figures),
                                           "tiny": False, "machine": line, "commit": sha, "date": now()})
        print(name, json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
