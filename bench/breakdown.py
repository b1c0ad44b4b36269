"""Where the time goes: torch.profiler breakdowns of a DM iteration, an MTT iteration, an expert step
and an evaluation epoch, at the reference code's configuration (bench/speed.py's reference_cfg).

    .venv/bin/python bench/breakdown.py                 # writes bench/results/breakdown.md/.json
    .venv/bin/python bench/breakdown.py --unchunked     # the engine before cache-sized chunks
    .venv/bin/python bench/breakdown.py --tiny          # toy sizes (a check that it runs)

Each target runs in its own process after one untimed warm-up; the table groups torch's operators by
what they do (convolution, norm, pooling, activation, element-wise arithmetic, augmentation, other)
and lists the top operators by their own CPU time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.common import machine, write_report
from bench.speed import REFERENCE_MTT, reference_cfg, table, unchunk  # noqa: E402

GROUPS = (("convolution", ("conv",)), ("norm", ("group_norm", "instance_norm", "batch_norm")),
          ("pooling", ("pool",)), ("activation", ("relu", "threshold", "clamp")),
          ("augmentation", ("grid_sampler", "affine_grid", "uniform", "randperm", "flip")),
          ("element-wise", ("mul", "add", "sub", "div", "fill", "copy", "sum", "mean", "pow", "where", "cat")))


def group_of(op: str) -> str:
    name = op.lower()
    return next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")


def workload(name: str, tiny: bool):
    """(warm-up-and-run callable) for one target, built outside the profiled region."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.data import dataset_for
    from pdd_engine.evaluate import BatchedCurriculum, Curriculum, EvalProtocol, random_subset
    from pdd_engine.methods import get_method
    from pdd_engine.methods.mtt import EXPERT_BATCH
    from pdd_engine.progressive import stage_context
    from pdd_engine.training import train_epochs

    base = reference_cfg(tiny)
    if name in ("dm", "mtt"):
        extra = dict(method="dm", batch_real=256) if name == "dm" else dict(REFERENCE_MTT, syn_steps=2 if tiny else 10)
        cfg = DistillConfig.make(dict(base, **extra))
        method = get_method(name)(stage_context(cfg, dataset_for(cfg)))
        method.setup()
        stored = torch.nn.Parameter(method.init_images())

        def call():
            method.loss(stored, 0).backward()
        return call
    cfg = DistillConfig.make(dict(base, method="mtt"))
    ds = dataset_for(cfg)
    if name == "expert":
        ctx = stage_context(cfg, ds)
        net = ctx.new_model(0)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y = ds.x_train[:EXPERT_BATCH], ds.y_train[:EXPERT_BATCH]
        return lambda: train_epochs(net, x, y, 1, opt, 0.01, EXPERT_BATCH, ctx.aug, 0, decay_at_half=False)
    x, y = random_subset(ds, 0, 10, 0)
    proto = EvalProtocol(epochs=1, models=5, depth=base["depth"], width=base["width"],
                         precision="bfloat16" if name == "eval_bf16" else "float32")
    cur = (BatchedCurriculum if name == "eval" else Curriculum)(ds, proto, torch.device("cpu"))
    cur.test_accuracy = lambda: []  # an epoch of training; the test pass is timed in bench/speed.py
    return lambda: cur.train_stage(x, y)


def child(name: str, tiny: bool, unchunked: bool) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from pdd_engine.device import tune_allocator
    if unchunked:
        unchunk()
    tune_allocator()  # as every run does
    call = workload(name, tiny)
    call()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    wall = time.perf_counter() - t
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(s for _, s, _ in ops) or 1.0
    groups: dict[str, float] = {}
    for op, s, _ in ops:
        groups[group_of(op)] = groups.get(group_of(op), 0.0) + s
    top = sorted(ops, key=lambda o: -o[1])[:8]
    return {"wall_s": wall, "cpu_s": total, "threads": torch.get_num_threads(),
            "groups": {g: s / total for g, s in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"op": op, "self_s": s, "share": s / total, "calls": n} for op, s, n in top]}


TARGETS = {"dm": "DM iteration (loss + backward)", "mtt": "MTT iteration, syn_steps 10 (loss + backward)",
           "expert": "expert step (256 real images)", "eval": "evaluation epoch (5 networks, 100 images, vmap)",
           "eval_seq": "evaluation epoch (5 networks, 100 images, sequential: a CPU run's path at this size)",
           "eval_bf16": "the same, eval_precision bfloat16"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", type=lambda v: v.split(","), default=list(TARGETS), help=f"of {', '.join(TARGETS)}")
    ap.add_argument("--unchunked", action="store_true", help="without models.CHUNK_BYTES (the engine before)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tiny, args.unchunked)))
        return 0
    out = args.out or ("breakdown_unchunked" if args.unchunked else "breakdown")  # a profile, not a results row
    report, md = {"machine": machine(), "unchunked": args.unchunked, "tiny": args.tiny}, []
    md.append(f"Machine: {report['machine']['cpus']} CPUs, torch {report['machine']['torch']}; "
              f"{'without' if args.unchunked else 'with'} cache-sized chunks{' (--tiny)' if args.tiny else ''}.\n")
    for name in args.only:
        cmd = [sys.executable, "-m", "bench.breakdown", "--child", name] + ["--tiny"] * args.tiny + ["--unchunked"] * args.unchunked
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            raise SystemExit(f"{name}: {p.stderr.strip()[-400:]}")
        r = report[name] = json.loads(p.stdout.strip().splitlines()[-1])
        shares = ", ".join(f"{g} {100 * v:.0f} %" for g, v in r["groups"].items() if v >= 0.005)
        md.append(table(f"{TARGETS[name]}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s of operator time "
                        f"({r['threads']} threads). By kind: {shares}",
                        ["operator", "self s", "share", "calls"],
                        [[o["op"], f"{o['self_s']:.3f}", f"{100 * o['share']:.1f} %", o["calls"]] for o in r["top"]]))
        write_report(out, report, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
