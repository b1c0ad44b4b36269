"""Robustness: the untrusted-input properties of tests/test_untrusted.py with many generated cases.

Runs the two property tests (mutated bundles, generated upload zips) under hypothesis's ``slow`` profile in a
child process, and appends one row to ``bench/results/robustness.csv``: how many cases ran, how each class of
case ended (loaded and valid, or refused in one line; any other exception fails the run), the child's peak
memory, machine and commit.

    python -m bench.robustness                 # 1,500 cases per property
    python -m bench.robustness --examples 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, append_row, commit, machine_line, now, read_rows

COLUMNS = ["examples_per_property", "cases", "outcomes", "passed", "peak_mb", "wall_s", "machine", "commit", "date"]
CSV = RESULTS / "robustness.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1500, help="generated cases per property")
    ap.add_argument("--results", type=Path, default=CSV)
    args = ap.parse_args()
    stats = Path(tempfile.mkdtemp()) / "outcomes.json"
    env = {**os.environ, "HYPOTHESIS_PROFILE": "slow", "PDD_FUZZ_EXAMPLES": str(args.examples),
           "PDD_FUZZ_STATS": str(stats)}
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_untrusted.py",
                          "-k", "generated"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    outcomes = json.loads(stats.read_text()) if stats.exists() else {}
    row = {"examples_per_property": args.examples, "cases": sum(outcomes.values()),
           "outcomes": "; ".join(f"{k} {v}" for k, v in sorted(outcomes.items())), "passed": out.returncode == 0,
           "peak_mb": f"{peak:.0f}", "wall_s": f"{wall:.0f}", "machine": machine_line(), "commit": commit(), "date": now()}
    append_row(args.results, COLUMNS, row)
    print(table(read_rows(args.results, COLUMNS)))
    if out.returncode:
        print(out.stdout[-3000:], file=sys.stderr)
    return out.returncode


def table(rows: list[dict]) -> str:
    lines = ["| cases | how they ended | every case loaded valid or refused in one line | peak MB | wall s |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['cases']} | {r['outcomes']} | {'yes' if r['passed'] == 'True' else 'no'} | {r['peak_mb']} | "
              f"{r['wall_s']} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
