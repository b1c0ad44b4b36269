"""Quality table: does PDD beat its own base method (P = 1) and its own random curriculum?

Every row is one (dataset, IPC, method, P, protocol) over several seeds, each seed in its own
subprocess with a fresh cache. Two protocols (PDD.md):

- **paper**: every stage gets the full distillation iterations and the full evaluation epochs, as the
  official code does (P x the compute of P = 1);
- **matched**: both are split by P, so every row of a block costs about the same.

P = 1 is the same under both, so it runs once. Each row's random baseline is its *own*: the same
number of real images per class, split into the same P stages and trained with the same curriculum
(for P > 1 the union of the stages' random images is exactly P = 1's random subset).

    .venv/bin/python bench/quality.py --datasets digits --ipcs 10 --methods dm,mtt --stages 1,5 --seeds 0,1,2
    .venv/bin/python bench/quality.py --datasets mnist --ipcs 10,50 --methods dm --budget 3600 --jobs 2

``--reference FILE`` adds the reference code's accuracy on the same rows (a JSON measured outside this
project, since the reference code is not ours to ship) beside the engine's, with the difference.

Writes bench/results/<out>.json and .md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from bench.common import RESULTS, machine, write_report  # noqa: E402


# -- one seed of one row, in a child process ------------------------------------------------
def child_main(cfg: dict, threads: int, whole_epochs: int) -> dict:
    import resource
    import tempfile

    import torch

    from pdd_engine import DistillConfig, distill
    from pdd_engine.cache import Store

    torch.set_num_threads(threads)
    t = time.time()
    if whole_epochs:
        from pdd_engine.evaluate import Curriculum, EvalProtocol
        from pdd_engine.data import dataset_for
        from pdd_engine.device import resolve_device

        c = DistillConfig.make(cfg, other_methods="drop")  # --extra may name another method's settings
        ds = dataset_for(c)
        proto = EvalProtocol(**{**EvalProtocol.from_config(c, ds.size).to_dict(), "epochs": whole_epochs})
        out = {"acc": Curriculum(ds, proto, resolve_device(c.device)).train_stage(ds.x_train, ds.y_train)}
    else:
        d = distill(DistillConfig.make(cfg, other_methods="drop"), Store(tempfile.mkdtemp()))
        out = {"accuracies": d.accuracies}
    out.update(seconds=time.time() - t, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def child(cfg: dict, threads: int, whole_epochs: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.quality", "--child", json.dumps(cfg), "--threads", str(threads),
                          "--whole-epochs", str(whole_epochs)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "row failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the plan -------------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """Rows to run: P = 1 once, every P > 1 under each protocol."""
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
                                     "schedule": None})
                for schedule in args.schedules:  # uneven stages (PDD's IPC-schedule ablation)
                    sizes = [int(v) for v in schedule.split(",")]
                    if sum(sizes) == ipc:
                        rows += [{"dataset": dataset, "ipc": ipc, "method": method, "stages": len(sizes),
                                  "protocol": protocol, "schedule": schedule} for protocol in args.protocols]
    return rows


def row_config(row: dict, args, iterations: int) -> dict:
    split = row["stages"] if row["protocol"] == "matched" else 1
    return {"eval_models": args.eval_models, "max_train": args.max_train, "compare_base": "off", **args.extra,
            "dataset": row["dataset"], "method": row["method"], "stages": row["stages"], "ipc": row["ipc"],
            "stage_ipc": row["schedule"],
            "iterations": max(1, iterations // split), "eval_epochs": max(1, args.eval_epochs // split)}


def run_row(row: dict, args, iterations: int) -> dict | None:
    cfg = row_config(row, args, iterations)
    def one_seed(seed: int) -> dict | None:
        try:
            return child({**cfg, "seed": seed}, args.threads)
        except RuntimeError as e:
            print(f"  {row} seed {seed}: {e}", file=sys.stderr)
            return None
    with ThreadPoolExecutor(args.seed_jobs) as pool:  # seeds at once: a GPU has room for several runs
        results = [r for r in pool.map(one_seed, args.seeds) if r is not None]
    if not results:
        return None
    per_stage = [[r["accuracies"][s] for r in results] for s in range(row["stages"])]
    res = {**row, "iterations_per_stage": cfg["iterations"], "eval_epochs_per_stage": cfg["eval_epochs"],
           "total_iterations": cfg["iterations"] * row["stages"], "total_eval_epochs": cfg["eval_epochs"] * row["stages"],
           "acc": [a["mean"] for a in per_stage[-1]], "random": [a["random_mean"] for a in per_stage[-1]],
           "stage_acc": [[a["mean"] for a in s] for s in per_stage],
           "stage_random": [[a["random_mean"] for a in s] for s in per_stage],
           "seconds": float(np.mean([r["seconds"] for r in results])),
           "peak_mb": float(np.max([r["peak_mb"] for r in results]))}
    print(f"{row['dataset']} IPC {row['ipc']} {row['method']} P={row['stages']} {row['schedule'] or ''} {row['protocol']}: "
          f"{pct(res['acc'])} "
          f"(own random {pct(res['random'])}; {res['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return res


def pct(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def delta(a: list[float], b: list[float]) -> str:
    """Difference of means in points, with ✓ when it is larger than both standard deviations."""
    d = 100 * (np.mean(a) - np.mean(b))
    clear = abs(d) > 100 * max(np.std(a), np.std(b))
    return f"{d:+.1f}{' ✓' if clear else ''}"


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
    ap.add_argument("--whole-epochs", type=int, default=50, help="epochs for the whole-dataset row (0: skip it)")
    ap.add_argument("--max-train", type=int, default=None, help="stratified real-train subset (default: all of it)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the table: iterations are scaled down to fit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child")
    ap.add_argument("--jobs", type=int, default=2, help="rows run at once")
    ap.add_argument("--seed-jobs", type=int, default=1, help="seeds of a row run at once (jobs x seed-jobs processes)")
    ap.add_argument("--extra", type=json.loads, default={}, help="JSON of further config fields for every row")
    ap.add_argument("--reference", help="JSON of the reference code's accuracies on the same rows (see "
                                        "load_reference), shown beside the engine's")
    ap.add_argument("--out", default=str(RESULTS / "quality"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(json.loads(args.child), args.threads, args.whole_epochs)))
        return 0

    if args.methods is None:
        from pdd_engine.methods import REGISTRY
        args.methods = list(REGISTRY)
    reference = load_reference(args.reference)  # read and checked before any row runs
    rows = plan(args)
    iterations = args.iterations
    if args.budget:  # probe seconds per iteration of the first row's method, then scale every row
        probe_cfg = {**row_config({**rows[0], "stages": 1, "protocol": "paper", "schedule": None}, args, 10), "eval_epochs": 1}
        probe = child(probe_cfg, args.threads)
        work = sum(r["stages"] if r["protocol"] == "paper" else 1 for r in rows) * len(args.seeds) / (args.jobs * args.seed_jobs)
        per_iter = max(probe["seconds"] / 10, 1e-3)
        iterations = int(np.clip(args.budget / work / per_iter, 10, args.iterations))
        print(f"budget {args.budget:.0f} s -> {iterations} iterations per P=1 row (probe {per_iter:.2f} s/iteration)",
              file=sys.stderr)

    t0 = time.time()
    done: list[dict] = []
    lock = threading.Lock()

    def one(row: dict) -> None:
        res = run_row(row, args, iterations)
        with lock:
            if res is not None:
                done.append(res)
            write(report_of(args, iterations, sorted(done, key=planned), {}, reference, t0), args)  # keep partial tables

    def planned(r: dict) -> int:  # finished rows in the plan's order
        return rows.index({k: r[k] for k in ("dataset", "ipc", "method", "stages", "protocol", "schedule")})

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, rows))
    whole = {}
    if args.whole_epochs:
        for d in args.datasets:
            whole[d] = child({"dataset": d, "max_train": args.max_train, "eval_models": args.eval_models, **args.extra},
                             args.threads, args.whole_epochs)
    print(write(report_of(args, iterations, sorted(done, key=planned), whole, reference, t0), args))
    return 0


def report_of(args, iterations: int, results: list[dict], whole: dict, reference: dict | None, t0: float) -> dict:
    return {"machine": machine(), "args": vars(args), "iterations": iterations, "rows": results, "whole": whole,
            "reference": reference, "seconds": time.time() - t0}


def load_reference(path: str | None) -> dict | None:
    """The reference code's accuracies, measured by running it on this machine: ``{"how": "what ran, where,
    when", "rows": [{"dataset", "ipc", "method", "stages", "accuracies": [one per seed, 0..1]}]}``."""
    if not path:
        return None
    ref = json.loads(Path(path).read_text())
    for r in ref["rows"]:
        missing = {"dataset", "ipc", "method", "stages", "accuracies"} - set(r)
        if missing:
            raise SystemExit(f"error: {path}: a row lacks {', '.join(sorted(missing))}. Fix: give every row those keys.")
    return ref


def reference_table(rows: list[dict], ref: dict) -> list[str]:
    """The engine's rows that the reference code also ran, side by side: Δ = engine - reference, and
    whether the engine is within 0.2 points of it or better (issue 8's bar). A reference row may carry a
    ``label`` (what differed in that run), so one engine row can face several."""
    key = lambda r: (r["dataset"], r["ipc"], r["method"], r["stages"])  # noqa: E731
    out = ["", f"Against the reference code: {ref.get('how', '')}", "",
           "| dataset | IPC | method | P | engine % | reference code | reference code % | Δ engine − reference | "
           "within 0.2 or better |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for theirs in (t for t in ref["rows"] if key(t) == key(r)):
            d = 100 * (np.mean(r["acc"]) - np.mean(theirs["accuracies"]))
            out.append(f"| {r['dataset']} | {r['ipc']} | {r['method'].upper()} | {r['stages']} | {pct(r['acc'])} | "
                       f"{theirs.get('label', 'as published')} | {pct(theirs['accuracies'])} | "
                       f"{delta(r['acc'], theirs['accuracies'])} | {'yes' if d >= -0.2 else 'no'} |")
    return out


def write(report: dict, args) -> str:
    md = markdown(report, args)
    write_report(args.out, report, md)
    return md


def markdown(report: dict, args) -> str:
    m = report["machine"]
    out = [f"Test accuracy % at the last stage, mean ± std over seeds {args.seeds} (each seed averages "
           f"{args.eval_models} evaluation networks). P = 1: {report['iterations']} distillation iterations, "
           f"{args.eval_epochs} evaluation epochs. *paper*: every stage gets both in full; *matched*: both split by P. "
           f"Own random: the same number of real images per class in the same P stages and curriculum. "
           f"Δ in points; ✓ = larger than both stds. Machine: {m['cpus']} CPUs, torch {m['torch']}"
           f"{', ' + m['cuda'] if m['cuda'] else ''}; wall s is per seed with {args.jobs} rows "
           f"x {getattr(args, 'seed_jobs', 1)} seeds at once, {args.threads} thread(s) each."
           + (f" Every row also sets {json.dumps(args.extra)}." if getattr(args, "extra", None) else ""), "",
           "| dataset | IPC | method | P | protocol | iterations | eval epochs | accuracy % | own random % | "
           "Δ vs P=1 | Δ vs own random | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = report["rows"]
    for r in rows:
        p = f"{r['stages']} ({r['schedule']})" if r.get("schedule") else r["stages"]
        base = next((b for b in rows if b["stages"] == 1 and (b["dataset"], b["ipc"], b["method"]) ==
                     (r["dataset"], r["ipc"], r["method"])), None)
        name = r["method"].upper() if r["stages"] == 1 else f"PDD+{r['method'].upper()}"
        vs_base = "–" if base is None or base is r else delta(r["acc"], base["acc"])
        out.append(f"| {r['dataset']} | {r['ipc']} | {name} | {p} | {r['protocol'] if r['stages'] > 1 else 'both'} | "
                   f"{r['total_iterations']} | {r['total_eval_epochs']} | {pct(r['acc'])} | {pct(r['random'])} | "
                   f"{vs_base} | {delta(r['acc'], r['random'])} | {r['seconds']:.0f} |")
    for d, w in report["whole"].items():
        out.append(f"| {d} | all | whole training set | – | – | – | {args.whole_epochs} | {pct(w['acc'])} | – | – | – | "
                   f"{w['seconds']:.0f} |")
    if report.get("reference"):
        out += reference_table(rows, report["reference"])
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
