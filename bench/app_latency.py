"""How fast the studio answers: app start to first page, and the time the server takes to answer a
control change (validation + estimate), cold (a network shape it has not timed yet) and warm.

    .venv/bin/python bench/app_latency.py            # writes bench/results/app_latency.{json,md}

The start is measured end to end (``python app.py`` until ``GET /`` answers 200, with a fresh
cache); the control change is ``Studio.check`` called in this process exactly as the page's
change event calls it, so it excludes the browser and the network round trip (a few ms locally).
Networks are timed for the estimate in the job manager's helper process, never in the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.common import RESULTS, machine, write_report  # noqa: E402


def start_to_first_page(repeats: int) -> list[float]:
    from tests.apphelpers import running_app

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            with running_app(Path(tmp)):
                out.append(time.perf_counter() - t)
    return out


def control_change() -> dict[str, float]:
    from app.jobs import JobManager
    from app.ui import Studio
    from pdd_engine import DistillConfig
    from pdd_engine.cache import Store

    from pdd_engine.estimate import cost_key

    tmp = Path(tempfile.mkdtemp())
    manager = JobManager(str(tmp / "cache"))
    studio = Studio(manager, Store(tmp / "cache"), tmp / "exports")
    d = DistillConfig()
    t = time.perf_counter()
    manager.pass_cost(*cost_key(d))  # what app.py starts in the background at launch
    calibration = time.perf_counter() - t
    names = ["dataset", "upload", "method", "stages", "ipc", "preset"] + [f.name for f in studio.fields]

    def controls(**kw) -> list:  # the page's controls, with raw (possibly invalid) values set
        values = studio.control_values(d)
        for name, value in kw.items():
            values[names.index(name)] = value
        return values

    def timed(**kw) -> float:
        t = time.perf_counter()
        studio.check(*controls(**kw))
        return time.perf_counter() - t

    out = {"helper process start + timing the default network (at launch, in the background)": calibration,
           "first change (default network already timed)": timed(),
           "same shape again": timed(iterations=300),
           "new width 64 (timed in the helper process)": timed(width=64),
           "method switch to MTT (timed shape)": timed(method="mtt"),
           "invalid value (evaluation networks 0)": timed(eval_models=0)}
    manager.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "app_latency"))
    args = ap.parse_args()
    starts = start_to_first_page(args.repeats)
    changes = control_change()
    report = {"machine": machine(), "start_s": starts, "control_change_s": changes}
    md = [f"Machine: {os.cpu_count()} CPUs. Start: `python app.py` until `GET /` answers, {args.repeats} times.", "",
          "| what | seconds |", "| --- | --- |",
          f"| app start to first page (mean of {len(starts)}; min {min(starts):.1f}, max {max(starts):.1f}) | "
          f"{sum(starts) / len(starts):.1f} |"]
    md += [f"| control change: {k} | {v:.3f} |" for k, v in changes.items()]
    text = "\n".join(md) + "\n"
    write_report(args.out, report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
