"""Quality table: random subset vs each base method (P = 1) vs PDD + method (P = 2, 5), and whole set.

Every row runs in its own subprocess (fresh cache, its own peak-memory reading) under the same
evaluation protocol; PDD rows use the same *total* number of distillation iterations as P = 1.

    .venv/bin/python bench/quality.py --datasets digits --ipcs 10 --methods dm,mtt --seeds 0,1,2
    .venv/bin/python bench/quality.py --budget 1800      # scale iterations to fit ~30 minutes

Writes bench/results/quality.json and quality.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

ROW = r"""
import json, resource, sys, tempfile, time, torch
sys.path.insert(0, {root!r})
from pdd_engine import DistillConfig, distill
from pdd_engine.cache import Store
torch.set_num_threads({threads})
t = time.time()
d = distill(DistillConfig(**json.loads(sys.argv[1])), Store(tempfile.mkdtemp()))
print(json.dumps({{"accuracies": d.accuracies, "seconds": time.time() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

WHOLE = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from pdd_engine import DistillConfig
from pdd_engine.evaluate import Curriculum, EvalProtocol
from pdd_engine.progressive import dataset_for
torch.set_num_threads({threads})
cfg = DistillConfig(**json.loads(sys.argv[1]))
ds = dataset_for(cfg)
proto = EvalProtocol(**{{**EvalProtocol.from_config(cfg, ds.size).to_dict(), "epochs": {epochs}}})
t = time.time()
acc = Curriculum(ds, proto, torch.device("cpu")).train_stage(ds.x_train, ds.y_train)
print(json.dumps({{"acc": acc, "seconds": time.time() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def child(script: str, cfg: dict, threads: int, **fmt) -> dict:
    code = script.format(root=str(ROOT), threads=threads, **fmt)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "row failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def plan(args) -> list[dict]:
    rows = []
    for dataset in args.datasets:
        for ipc in args.ipcs:
            for method in args.methods:
                for p in args.stages:
                    if p > ipc or ipc % p:
                        continue
                    rows.append({"dataset": dataset, "ipc": ipc, "method": method, "stages": p})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda t: lambda s: [t(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--datasets", type=split(str), default=["digits"])
    ap.add_argument("--ipcs", type=split(int), default=[1, 10])
    ap.add_argument("--methods", type=split(str), default=["dm", "mtt", "dc", "dsa", "idc"])
    ap.add_argument("--stages", type=split(int), default=[1, 2, 5])
    ap.add_argument("--seeds", type=split(int), default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=200, help="total distillation iterations (all stages together)")
    ap.add_argument("--eval-epochs", type=int, default=300,
                    help="evaluation epochs in total, split evenly across stages so every row trains as long")
    ap.add_argument("--eval-models", type=int, default=3)
    ap.add_argument("--whole-epochs", type=int, default=50, help="epochs for the whole-dataset row")
    ap.add_argument("--max-train", type=int, default=None, help="stratified real-train subset (e.g. 10000 for mnist)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole table: iterations are scaled down to fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", type=json.loads, default={}, help="JSON of further config fields for every row")
    ap.add_argument("--out", default=str(RESULTS / "quality"))
    args = ap.parse_args()

    rows = plan(args)
    common = {"eval_epochs": args.eval_epochs, "eval_models": args.eval_models, "max_train": args.max_train, **args.extra}
    iterations = args.iterations
    if args.budget:  # probe: seconds per iteration of the first row's method at its size, then scale
        probe = child(ROW, {**common, **rows[0], "stages": 1, "iterations": 10, "seed": 0}, args.threads)
        per_row = args.budget / (len(rows) * len(args.seeds))
        per_iter = max(probe["seconds"] / 10, 1e-3)
        iterations = int(np.clip(per_row / per_iter, 10, args.iterations))
        print(f"budget {args.budget:.0f} s -> {iterations} total iterations per row (probe {per_iter:.2f} s/iteration)", file=sys.stderr)

    results, t0 = [], time.time()
    baseline: dict[tuple, list] = {}
    for row in rows:
        cfg = {**common, "dataset": row["dataset"], "method": row["method"], "stages": row["stages"], "ipc": row["ipc"],
               "iterations": max(1, iterations // row["stages"]), "eval_epochs": max(1, args.eval_epochs // row["stages"])}
        accs, rand, secs, peaks = [], [], [], []
        for seed in args.seeds:
            try:
                r = child(ROW, {**cfg, "seed": seed}, args.threads)
            except RuntimeError as e:
                print(f"  {row} seed {seed}: {e}", file=sys.stderr)
                continue
            accs.append(r["accuracies"][-1]["mean"])
            rand.append(r["accuracies"][-1]["random_mean"])
            secs.append(r["seconds"])
            peaks.append(r["peak_mb"])
        if not accs:
            continue
        res = {**row, "iterations_per_stage": cfg["iterations"], "acc": accs, "seconds": float(np.mean(secs)),
               "peak_mb": float(np.max(peaks))}
        results.append(res)
        baseline.setdefault((row["dataset"], row["ipc"]), rand)
        print(f"{row['dataset']} IPC {row['ipc']} {row['method']} P={row['stages']}: {pct(accs)} "
              f"({res['seconds']:.0f} s, {res['peak_mb']:.0f} MB)", file=sys.stderr, flush=True)
    whole = {}
    for dataset in args.datasets:
        w = child(WHOLE, {**common, "dataset": dataset}, args.threads, epochs=args.whole_epochs)
        whole[dataset] = w
    report = {"machine": machine(), "args": {k: v for k, v in vars(args).items()}, "total_iterations": iterations,
              "rows": results, "random": {f"{d}/{i}": v for (d, i), v in baseline.items()},
              "whole": whole, "seconds": time.time() - t0}
    md = markdown(report, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    Path(args.out + ".md").write_text(md)
    print(md)
    return 0


def machine() -> dict:
    import torch
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": __import__("os").cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def markdown(report: dict, args) -> str:
    out = [f"Test accuracy % (mean ± std over seeds {args.seeds}; each seed averages {args.eval_models} eval networks), "
           f"{report['total_iterations']} distillation iterations and {args.eval_epochs} evaluation epochs in total per row "
           f"(PDD rows split both evenly across stages). "
           f"Machine: {report['machine']['cpus']} CPUs, torch {report['machine']['torch']}.", "",
           "| dataset | IPC | method | P | accuracy % | iterations/stage | wall s | peak MB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(r["dataset"], r["ipc"]) for r in report["rows"]}, key=lambda k: (k[0], k[1]))
    for d, i in keys:
        out.append(f"| {d} | {i} | random real subset | – | {pct(report['random'][f'{d}/{i}'])} | – | – | – |")
        for r in (r for r in report["rows"] if (r["dataset"], r["ipc"]) == (d, i)):
            name = r["method"].upper() if r["stages"] == 1 else f"PDD+{r['method'].upper()}"
            out.append(f"| {d} | {i} | {name} | {r['stages']} | {pct(r['acc'])} | {r['iterations_per_stage']} | "
                       f"{r['seconds']:.0f} | {r['peak_mb']:.0f} |")
    for d, w in report["whole"].items():
        out.append(f"| {d} | all | whole training set ({args.whole_epochs} epochs) | – | {pct(w['acc'])} | – | "
                   f"{w['seconds']:.0f} | {w['peak_mb']:.0f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
