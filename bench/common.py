"""What every benchmark script shares: the machine and commit a row was measured on, and the results files.

Results are data: each benchmark appends one row per measured setting to a CSV under ``bench/results/``
(``quality.csv``, ``speed.csv``), and ``bench/report.py`` renders the tables of ``docs/benchmarks.md`` and the
README from those rows. A row is appended whole (one write, flushed and synced), so a killed benchmark
leaves at most one damaged last line, which :func:`read_rows` skips (and a resumed run measures again).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

from pdd_engine.results import append_row, read_rows  # noqa: F401  (the results' one reader and writer)

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The processor's model name and whether it runs bf16 natively (what a speed figure depends on)."""
    name = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), name)
        have = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
        flags = "AVX-512 BF16" if {"avx512_bf16"} & have or {"amx_bf16"} & have else \
            "AVX-512" if "avx512f" in have else "AVX2" if "avx2" in have else ""
    except OSError:
        pass
    return f"{name} ({flags})" if flags else name


def machine() -> dict:
    """Platform, CPU count and kind, torch version and GPU (None on CPU-only machines)."""
    import torch
    return {"platform": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_line(m: Optional[dict] = None) -> str:
    """One short line naming the machine, for a results row."""
    m = m or machine()
    return f"{m['cpus']} CPUs {m['processor']}, torch {m['torch']}" + (f", {m['cuda']}" if m["cuda"] else "")


def commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def joined(values: Iterable[float], digits: int = 4) -> str:
    """A list of numbers as one CSV cell (``;``-separated)."""
    return ";".join(f"{v:.{digits}f}" for v in values)


def write_report(out: str | Path, report: dict, md: str) -> None:
    """``out``.json (the numbers) and ``out``.md (the table), side by side (the speed script's sections)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2))
    Path(f"{out}.md").write_text(md)


def cli_default_run(env: Optional[dict] = None, flags: Iterable[str] = (), timeout: Optional[float] = None) -> dict:
    """``pdd distill --quiet`` (the default run, plus ``flags``) from a fresh cache, with ``env`` added to
    this environment: its wall seconds and the CPU seconds it and its children used, or that it ran past
    ``timeout`` (wall_s None). The CLI side of bench.app_latency and bench.speed --only openmp."""
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as cache:
        r, t = os.times(), time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "pdd_engine", "distill", "--quiet", "--cache-dir", cache, *flags],
                           env={**os.environ, **(env or {})}, cwd=ROOT, check=True, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"wall_s": None, "timed_out_s": timeout}
        wall, done = time.perf_counter() - t, os.times()
    return {"wall_s": wall, "cpu_s": done.children_user + done.children_system - r.children_user - r.children_system}
