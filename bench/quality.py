"""Quality rows: does PDD beat its own base method (P = 1), those images trained as long, and its own random
curriculum?

Every row is one setting (dataset, IPC, method, P, protocol, schedule of sizes) over several seeds, each seed
a child process. A PDD run compares itself as it goes (``compare_base`` and ``compare_epochs``), so one run
per seed gives the row's four numbers:

- **PDD**: the curriculum's accuracy after the last stage;
- **P = 1**: the base method alone at the same IPC, trained for the evaluation epochs;
- **P = 1, same epochs**: those P = 1 images trained for as many epochs as PDD's curriculum (P x E): what
  more epochs alone give the base's own images (if PDD only ties this, its gain was the epochs);
- **own random**: the same number of real images per class in the same P stages and curriculum.

Two protocols (PDD.md): **paper** gives every stage the full distillation iterations and evaluation epochs,
as the official code does (P x the compute of P = 1); **matched** splits both by P (its P = 1 comparison is
then the P = 1 row itself, and "same epochs" is P = 1: E/P x P = E).

Rows are appended to ``bench/results/quality.csv`` as each finishes; a setting already there is skipped, so a
long table fills over several sittings (the same command resumes it; a damaged line is measured again). Each
seed is kept too, as it finishes, in ``quality_seeds.jsonl`` beside the CSV (its per-stage accuracies, step
sizes, warnings and time): a resumed row runs only the seeds not there yet, so a row longer than one sitting
finishes over several with ``--seed-jobs 1``, even on a machine whose engine cache did not survive. The seeds
share one engine cache (``--cache-dir``): a P = 1 distillation serves every P > 1 row's comparison, and
stage-1 MTT experts are trained once for every IPC. Tables: ``python -m bench.report``.

    python -m bench.quality --datasets digits --ipcs 10 --methods dm --stages 1,2,5
    python -m bench.quality --datasets mnist --max-train 10000 --methods mtt,idc --ipcs 10,50 --stages 1,2,5 \\
        --extra '{"width": 32}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import RESULTS, ROOT, append_row, commit, joined, machine_line, now, read_rows
from pdd_engine.results import COLUMNS, SETTING, append_seed, complete, read_seeds, seed_key, seeds_path

CSV = RESULTS / "quality.csv"


# -- one seed of one row, in a child process ------------------------------------------------
def child_main(cfg: dict, threads: int, cache_dir: str) -> dict:
    import resource

    import torch

    from pdd_engine import DistillConfig, PDDError, run
    from pdd_engine import events as E
    from pdd_engine.cache import Store
    from pdd_engine.device import resolved

    torch.set_num_threads(threads)
    t = time.time()
    c = resolved(DistillConfig.make(cfg, other_methods="drop"))  # --extra may name another method's settings
    lrs, warnings, last = [], [], None
    for ev in run(c, Store(cache_dir, size_limit_gb=64)):
        if isinstance(ev, E.StageFinished):
            lrs.append(ev.learned_lr)
        elif isinstance(ev, E.Message) and ev.text.startswith("warning"):
            warnings.append(f"{ev.where}: {ev.text}")
        last = ev
    if not isinstance(last, E.Done):
        raise PDDError(getattr(last, "message", "the run did not finish"), "see the message")
    return {"accuracies": last.accuracies, "lrs": lrs, "warnings": warnings, "seconds": time.time() - t,
            "computed": last.computed_stages,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "resolved": resolved_columns(c)}


def child(cfg: dict, threads: int, cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.quality", "--child", json.dumps(cfg), "--threads", str(threads),
                          "--cache-dir", cache_dir], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "row failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the plan -------------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """Settings to measure, cheapest first within each dataset and IPC: P = 1 once, every P > 1 under each
    protocol, then the uneven schedules; only (P, IPC) pairs the engine accepts."""
    from pdd_engine import DistillConfig
    from pdd_engine.errors import ConfigError

    rows = []
    for dataset in args.datasets:
        for ipc in args.ipcs:
            for method in args.methods:
                for p in args.stages:
                    try:  # the engine's own rules decide which (P, IPC) pairs exist
                        DistillConfig.make(dict(dataset=dataset, method=method, stages=p, ipc=ipc))
                    except ConfigError:
                        continue
                    for protocol in (["paper"] if p == 1 else args.protocols):
                        rows.append({"dataset": dataset, "ipc": ipc, "method": method, "stages": p, "protocol": protocol,
                                     "schedule": ""})
                for schedule in args.schedules:  # uneven stages (PDD's IPC-schedule ablation)
                    sizes = [int(v) for v in schedule.split(",")]
                    if sum(sizes) == ipc:
                        rows += [{"dataset": dataset, "ipc": ipc, "method": method, "stages": len(sizes),
                                  "protocol": protocol, "schedule": schedule} for protocol in args.protocols]
    return rows


def row_config(row: dict, args) -> dict:
    """The engine config of a row (without its seed). The paper protocol compares with P = 1 and with P = 1
    trained as long inside the run; the matched protocol's comparison is the P = 1 row itself."""
    split = row["stages"] if row["protocol"] == "matched" else 1
    compare = "final" if row["protocol"] == "paper" else "off"
    return {"eval_models": args.eval_models, "max_train": args.max_train, **args.extra,
            "dataset": row["dataset"], "method": row["method"], "stages": row["stages"], "ipc": row["ipc"],
            "stage_ipc": row["schedule"] or None, "compare_base": compare, "compare_epochs": True,
            "iterations": max(1, args.iterations // split), "eval_epochs": max(1, args.eval_epochs // split)}


def memory_share(args) -> dict:
    """Each child's part of the memory (``max_memory_gb``) when several run at once: a child plans for what it
    sees free (an MTT unroll takes up to half of it, full rather than bounded), so three MTT seeds at IPC 50 on
    a 23 GB machine would each plan a 7.8 GB full unroll against 19 GB free, 23 GB together. With a share
    each picks the bounded unroll, which gives the same result (``mtt_unroll`` is in no key). A budget in
    ``--extra`` is the user's."""
    parts = args.jobs * args.seed_jobs
    if parts == 1 or "max_memory_gb" in args.extra:
        return {}
    import torch
    from pdd_engine.methods.unroll import available_memory_bytes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"max_memory_gb": round(available_memory_bytes(device, None) / 2 ** 30 / parts, 2)}


def setting_of(row: dict, cfg: dict, resolved: dict, args) -> dict:
    """The SETTING columns of a row, as text (how the CSV holds them and how a resumed run recognises them)."""
    values = {**row, **resolved, "iterations": cfg["iterations"], "eval_epochs": cfg["eval_epochs"],
              "eval_models": cfg["eval_models"], "seeds": " ".join(map(str, args.seeds)),
              "extra": json.dumps({k: v for k, v in args.extra.items() if k != "dsa_strategy"}, sort_keys=True)}
    return {k: "" if values[k] is None else str(values[k]) for k in SETTING}


def resolved_columns(c) -> dict:
    """The SETTING columns a resolved config decides (its own column: the augmentation, not in ``extra``)."""
    return {"width": c.width, "max_train": c.max_train, "precision": c.precision, "eval_precision": c.eval_precision,
            "augmentation": c.dsa_strategy}


def resolved_of(cfg: dict) -> dict:
    """What the config resolves to for the SETTING columns, without running it."""
    from pdd_engine import DistillConfig
    from pdd_engine.device import resolved
    return resolved_columns(resolved(DistillConfig.make(cfg, other_methods="drop")))  # auto: what runs here


def measured(results: list[dict], row: dict) -> dict:
    """The MEASURED columns from each seed's per-stage accuracies (percentages; per-stage cells are means over
    seeds). A matched-protocol row leaves its comparisons empty: they are the P = 1 row's."""
    last = [r["accuracies"][-1] for r in results]
    pct = lambda vals: (100 * float(np.mean(vals)), 100 * float(np.std(vals)))  # noqa: E731
    out = {}
    for name, key in (("", "mean"), ("random_", "random_mean"), ("base_", "base_mean"), ("base_epochs_", "base_epochs_mean")):
        vals = [a.get(key) for a in last]
        if row["stages"] == 1 and name.startswith("base"):  # P = 1 is its own base, trained for its own epochs
            vals = [a["mean"] for a in last]
        m, s = pct(vals) if all(v is not None for v in vals) else (None, None)
        out[f"{name}mean"], out[f"{name}std"] = ("" if m is None else f"{m:.2f}"), ("" if s is None else f"{s:.2f}")

    def per_stage(key: str) -> str:
        cells = []
        for s in range(row["stages"]):
            vals = [r["accuracies"][s].get(key) for r in results]
            cells.append(100 * float(np.mean(vals)) if all(v is not None for v in vals) else float("nan"))
        return "" if all(np.isnan(cells)) else joined(cells, 2)
    out.update(stage_ipc=";".join(str(a["ipc"]) for a in results[0]["accuracies"]), stage_mean=per_stage("mean"),
               stage_std=joined([100 * float(np.std([r["accuracies"][s]["mean"] for r in results]))
                                 for s in range(row["stages"])], 2),
               stage_random=per_stage("random_mean"), stage_base=per_stage("base_mean"),
               stage_base_epochs=per_stage("base_epochs_mean"),
               learned_lr="" if results[0]["lrs"][-1] is None else
               joined([float(np.mean([r["lrs"][s] for r in results])) for s in range(row["stages"])], 6),
               wall_s=f"{np.mean([r['seconds'] for r in results]):.0f}",
               peak_mb=f"{np.max([r['peak_mb'] for r in results]):.0f}")
    return out


def run_row(row: dict, args, kept: dict[tuple, dict], lock: threading.Lock) -> dict | None:
    """A row's seeds (those already ``kept`` are not run again; each new one is kept as it finishes), then the
    row from all of them, or None if a seed failed."""
    cfg = row_config(row, args)
    setting = setting_of(row, cfg, resolved_of(cfg), args)
    budget = memory_share(args)  # for the children only: not a setting of the row

    def one_seed(seed: int) -> dict | None:
        if (out := kept.get(seed_key(setting, seed, args.machine))) is not None:
            print(f"  {label(row)} seed {seed}: kept in {args.seed_results.name}", file=sys.stderr, flush=True)
            return out
        try:
            out = child({**cfg, **budget, "seed": seed}, args.threads, args.cache_dir)
        except RuntimeError as e:
            print(f"  {label(row)} seed {seed}: {e}", file=sys.stderr, flush=True)
            return None
        with lock:
            append_seed(args.seed_results, setting, seed, args.machine, args.commit, now(), out)
        for warning in out.get("warnings", []):  # a seed's unstable matching, said beside its row
            print(f"  {label(row)} seed {seed}: {warning}", file=sys.stderr, flush=True)
        return {**out, "machine": args.machine}
    with ThreadPoolExecutor(args.seed_jobs) as pool:  # seeds at once: a GPU has room for several runs
        results = list(pool.map(one_seed, args.seeds))
    if any(r is None for r in results):
        return None  # a row is all its seeds or nothing: a resumed run runs the missing ones
    machines = " + ".join(dict.fromkeys(r["machine"] for r in results))  # every machine its seeds ran on
    return {**setting, **measured(results, row), "machine": machines, "commit": args.commit, "date": now()}


def label(row: dict) -> str:
    name = row["method"].upper() if row["stages"] == 1 else f"PDD+{row['method'].upper()}"
    return (f"{row['dataset']} IPC {row['ipc']} {name} P={row['stages']}"
            f"{' (' + row['schedule'] + ')' if row.get('schedule') else ''} {row['protocol']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda t: lambda s: [t(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--datasets", type=split(str), default=["digits"])
    ap.add_argument("--ipcs", type=split(int), default=[10])
    ap.add_argument("--schedules", type=str.split, default=[],
                    help='uneven stages to add, e.g. "7,3 4,3,2,1": images per class of each stage (rows where they '
                         'add up to the IPC)')
    ap.add_argument("--methods", type=split(str), default=None, help="default: every registered method")
    ap.add_argument("--stages", type=split(int), default=[1, 5])
    ap.add_argument("--protocols", type=split(str), default=["paper", "matched"])
    ap.add_argument("--seeds", type=split(int), default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=200, help="distillation iterations of P = 1 (and of each paper-protocol stage)")
    ap.add_argument("--eval-epochs", type=int, default=300, help="evaluation epochs of P = 1 (and of each paper-protocol stage)")
    ap.add_argument("--eval-models", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=None, help="stratified real-train subset (default: all of it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child")
    ap.add_argument("--jobs", type=int, default=1, help="rows run at once")
    ap.add_argument("--seed-jobs", type=int, default=1, help="seeds of a row run at once (jobs x seed-jobs processes)")
    ap.add_argument("--extra", type=json.loads, default={}, help="JSON of further config fields for every row")
    ap.add_argument("--results", type=Path, default=CSV, help="the CSV rows are appended to (default bench/results/quality.csv)")
    ap.add_argument("--seed-results", type=Path, default=None,
                    help="where each finished seed is kept (default: beside --results, quality_seeds.jsonl)")
    ap.add_argument("--cache-dir", default=os.environ.get("PDD_BENCH_CACHE") or str(Path.home() / ".cache" / "pdd_studio" / "bench"),
                    help="the engine cache every seed shares (PDD_BENCH_CACHE)")
    ap.add_argument("--dry-run", action="store_true", help="list the settings still to measure, and stop")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(json.loads(args.child), args.threads, args.cache_dir)))
        return 0
    if args.methods is None:
        from pdd_engine.methods import REGISTRY
        args.methods = list(REGISTRY)
    args.machine, args.commit = machine_line(), commit()
    args.seed_results = args.seed_results or seeds_path(args.results)
    done = {tuple(r[k] for k in SETTING) for r in read_rows(args.results, COLUMNS) if complete(r)}
    todo = [r for r in plan(args)
            if tuple(setting_of(r, row_config(r, args), resolved_of(row_config(r, args)), args)[k] for k in SETTING)
            not in done]
    print(f"{len(todo)} setting(s) to measure ({len(plan(args)) - len(todo)} already in {args.results.name})",
          file=sys.stderr, flush=True)
    if args.dry_run:
        for r in todo:
            print(label(r))
        return 0
    lock, kept = threading.Lock(), read_seeds(args.seed_results)

    def one(row: dict) -> None:
        t = time.time()
        res = run_row(row, args, kept, lock)
        with lock:
            if res is None:
                print(f"{label(row)}: failed (see above); not written", file=sys.stderr, flush=True)
                return
            append_row(args.results, COLUMNS, res)
            print(f"{label(row)}: {res['mean']} ± {res['std']} (P=1 {res['base_mean'] or '–'}, same epochs "
                  f"{res['base_epochs_mean'] or '–'}, own random {res['random_mean']}; {time.time() - t:.0f} s)",
                  file=sys.stderr, flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    from bench.report import quality_table
    print(quality_table(read_rows(args.results, COLUMNS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
