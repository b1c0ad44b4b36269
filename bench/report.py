"""Tables from the results data: ``bench/results/quality.csv`` and ``speed.csv`` -> markdown.

The generated tables sit in ``docs/benchmarks.md`` and ``README.md`` between marker lines::

    <!-- table: quality dataset=mnist method=mtt -->
    ...generated...
    <!-- end table -->

The first line names the table and its row filter (``column=value`` pairs, ``|`` for alternatives). This script
rewrites every marked block from the CSVs; ``--check`` only says whether the committed tables are what the
data gives (the test suite runs it), so no figure is ever typed by hand.

    python -m bench.report            # rewrite the tables in README.md and docs/benchmarks.md
    python -m bench.report --check    # exit 1 if a committed table differs from a fresh render
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bench.common import ROOT, read_rows
from pdd_engine.results import SETTING, cells, comparison_cells, comparisons, delta, latest, number, pm, setup

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- table: (\w+)((?: [\w.]+=[^ >]*)*) -->\n)(.*?)(<!-- end table -->)", re.S)


def quality_rows() -> list[dict]:
    from bench.quality import COLUMNS, CSV
    return read_rows(CSV, COLUMNS)


def robustness_rows() -> list[dict]:
    from bench.robustness import COLUMNS, CSV
    return read_rows(CSV, COLUMNS)


def robustness_table(rows: list[dict]) -> str:
    from bench.robustness import table
    return table(rows)


def speed_rows() -> list[dict]:
    from bench.speed import COLUMNS, CSV
    return read_rows(CSV, COLUMNS)


def quality_table(rows: list[dict]) -> str:
    """One line per setting (its newest measurement): PDD beside its three comparisons and the differences."""
    everything = rows
    out = ["| dataset | IPC | method | P | protocol | iterations | eval epochs | setup | accuracy % | P = 1 % | Δ vs P = 1 | "
           "P = 1, same epochs % | Δ vs P = 1, same epochs | own random % | Δ vs own random | seeds | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in latest(rows):
        c = comparisons(r, everything)
        p = int(r["stages"])
        name = r["method"].upper() if p == 1 else f"PDD+{r['method'].upper()}"
        stages = f"{p} ({r['schedule']})" if r["schedule"] else str(p)
        protocol = "both" if p == 1 else r["protocol"]
        later = json.loads(r["extra"] or "{}").get("later_iterations") or int(r["iterations"])  # the knob's rows
        out.append(f"| {r['dataset']} | {r['ipc']} | {name} | {stages} | {protocol} | {int(r['iterations']) + later * (p - 1)} | "
                   f"{int(r['eval_epochs']) * p} | {setup(r)} | {' | '.join(comparison_cells(r, c))} | "
                   f"{len(r['seeds'].split())} | {r['wall_s']} |")
    return "\n".join(out)


def stage_table(rows: list[dict]) -> str:
    """Per-stage diagnostics of P > 1 rows (each setting's newest measurement, named as in the quality
    table): each stage's accuracy, its gain over the previous union, and the learned step size (MTT) —
    what to read when a target is missed."""
    out = ["| dataset | IPC | method | P | protocol | setup | stage | IPC so far | accuracy % | gain over previous stage | "
           "own random % | learned lr |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in latest(rows):
        if r["stages"] == "1":
            continue
        means, randoms = cells(r["stage_mean"]), cells(r["stage_random"])
        lrs = cells(r["learned_lr"]) or [None] * len(means)
        stages = f"{r['stages']} ({r['schedule']})" if r["schedule"] else r["stages"]
        for s, (ipc, m) in enumerate(zip(r["stage_ipc"].split(";"), means)):
            gain = "–" if s == 0 else f"{m - means[s - 1]:+.1f}"
            lr = "–" if lrs[s] is None else f"{lrs[s]:.4g}"
            out.append(f"| {r['dataset']} | {r['ipc']} | PDD+{r['method'].upper()} | {stages} | {r['protocol']} | "
                       f"{setup(r)} | {s + 1} | {ipc} | {m:.1f} | {gain} | {randoms[s]:.1f} | {lr} |")
    return "\n".join(out)


def speed_table(rows: list[dict]) -> str:
    from bench.speed import speed_table as table
    return table(rows)


def variables_table(group: str) -> Callable[[list[dict]], str]:
    """The environment variables of one group (pdd_engine.settings), with their defaults and what they do."""
    def draw(_: list[dict]) -> str:
        from pdd_engine.settings import VARIABLES
        from pdd_engine.untrusted import size_text
        shown = lambda v: ("–" if v.default is None else size_text(v.default) if "BYTES" in v.name and isinstance(v.default, int)  # noqa: E731
                           else f"{v.default:,}" if isinstance(v.default, int) and not isinstance(v.default, bool)
                           else str(v.default).replace(str(__import__("pathlib").Path.home()), "~"))
        lines = ["| variable | default | what it sets |", "| --- | --- | --- |"]
        lines += [f"| `{v.name}` | {shown(v)} | {v.doc} |" for v in VARIABLES.values() if v.group == group]
        return "\n".join(lines)
    return draw


def caps_table(_: list[dict]) -> str:
    """Every setting with a server maximum (the studio refuses more; its operator raises it)."""
    from pdd_engine.config import schema
    from pdd_engine.settings import cap_variable
    n = lambda v: f"{v:,.0f}" if float(v).is_integer() else f"{v:g}"  # noqa: E731
    lines = ["| setting | server maximum | variable | allowed anywhere |", "| --- | --- | --- | --- |"]
    for s in schema()["settings"]:
        if s["server_max"] is not None:
            bound = f"{n(s['minimum'])} to {n(s['maximum'])}" if s["maximum"] is not None else f"{n(s['minimum'])} or more"
            owners = f" ({', '.join(s['owners'])})" if s["owners"] else ""
            lines.append(f"| `{s['name']}`{owners} | {n(s['server_max'])} | `{cap_variable(s['name'])}` | {bound} |")
    return "\n".join(lines)


TABLES: dict[str, tuple[Callable[[], list[dict]], Callable[[list[dict]], str]]] = {
    "limits": (list, variables_table("limit")),
    "server": (list, variables_table("server")),
    "data": (list, variables_table("data")),
    "caps": (list, caps_table),
    "quality": (quality_rows, quality_table),
    "stages": (quality_rows, stage_table),
    "speed": (speed_rows, speed_table),
    "robustness": (robustness_rows, robustness_table),
}


def matches(row: dict, filters: dict[str, str]) -> bool:
    return all(row.get(k) in v.split("|") for k, v in filters.items())


def render(text: str) -> str:
    """``text`` with every marked table rewritten from the results data."""
    cache: dict[str, list[dict]] = {}

    def table(m: re.Match) -> str:
        kind, filters = m.group(2), dict(f.split("=", 1) for f in m.group(3).split())
        rows_of, draw = TABLES[kind]
        rows = cache.setdefault("quality" if kind == "stages" else kind, rows_of())
        chosen = [r for r in rows if matches(r, filters)]
        body = draw(chosen) if chosen or rows_of is list else "_No rows measured yet: the command above fills this table._"
        return f"{m.group(1)}{body}\n{m.group(5)}"
    return BLOCK.sub(table, text)


def load_reference(path: str | None) -> dict | None:
    """The reference code's accuracies, measured by running it on this machine: ``{"how": "what ran, where",
    "rows": [{"dataset", "ipc", "method", "stages", "accuracies": [one per seed, 0..1]}]}``."""
    if not path:
        return None
    ref = json.loads(Path(path).read_text())
    for r in ref["rows"]:
        missing = {"dataset", "ipc", "method", "stages", "accuracies"} - set(r)
        if missing:
            raise SystemExit(f"error: {path}: a row lacks {', '.join(sorted(missing))}. Fix: give every row those keys.")
    return ref


def reference_table(rows: list[dict], ref: dict) -> str:
    """The engine's rows that the reference code also ran, side by side: Δ = engine - reference, and whether
    the engine is within 0.2 points of it or better. A reference row may carry a ``label`` (what differed)."""
    key = lambda r: (str(r["dataset"]), str(r["ipc"]), str(r["method"]), str(r["stages"]))  # noqa: E731
    out = [f"Against the reference code: {ref.get('how', '')}", "",
           "| dataset | IPC | method | P | engine % | reference code | reference code % | Δ engine − reference | "
           "within 0.2 or better |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mine = (number(r["mean"]), number(r["std"]))
        for theirs in (t for t in ref["rows"] if key(t) == key(r)):
            acc = 100 * np.asarray(theirs["accuracies"])
            ref_ms = (float(acc.mean()), float(acc.std()))
            d = mine[0] - ref_ms[0]
            out.append(f"| {r['dataset']} | {r['ipc']} | {r['method'].upper()} | {r['stages']} | {pm(*mine)} | "
                       f"{theirs.get('label', 'as published')} | {pm(*ref_ms)} | {delta(mine, ref_ms)} | "
                       f"{'yes' if d >= -0.2 else 'no'} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed table differs from the data")
    ap.add_argument("--reference", help="print the quality rows beside the reference code's accuracies (JSON)")
    ap.add_argument("--csv", type=Path, help="print the quality table of this CSV (e.g. a GPU check's) and stop")
    args = ap.parse_args()
    if args.csv:
        from bench.quality import COLUMNS
        rows = read_rows(args.csv, COLUMNS)
        print(quality_table(rows) + "\n\n" + stage_table(rows))
        return 0
    if args.reference:
        print(reference_table(quality_rows(), load_reference(args.reference)))
        return 0
    stale = []
    for doc in DOCUMENTS:
        if not doc.exists():
            continue
        old = doc.read_text()
        new = render(old)
        if new != old:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print(f"stale tables in {', '.join(map(str, stale))}. Fix: python -m bench.report", file=sys.stderr)
        return 1
    print("tables " + ("up to date" if not stale else f"rewritten in {', '.join(map(str, stale))}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
