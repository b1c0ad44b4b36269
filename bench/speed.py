"""Speed and memory on this machine: methods, evaluation, transition, MTT unroll memory, threads.

    .venv/bin/python bench/speed.py            # prints markdown tables, writes bench/results/speed.json/.md

Every measurement runs in its own subprocess, so its peak memory (resident set growth over the
process's state after set-up, or CUDA's peak allocation on a GPU) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, write_report  # noqa: E402


def peak_mb() -> float:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> float:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return peak_mb()


def sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- measurements (each runs in a child process) ---------------------------------------------

def m_method(a: dict) -> dict:
    """Seconds per distillation iteration and peak memory for one method (stage 1, fixed config)."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.methods import get_method
    from pdd_engine.data import dataset_for
    from pdd_engine.device import resolve_device
    from pdd_engine.progressive import stage_context

    cfg = DistillConfig.make(a["cfg"], other_methods="drop")  # one base dict for every method
    ds = dataset_for(cfg)
    device = resolve_device("auto")
    method = get_method(cfg.method)(stage_context(cfg, ds, device=device))
    t = time.perf_counter()
    method.setup()
    setup_s = time.perf_counter() - t
    stored = torch.nn.Parameter(method.init_images())
    opt = torch.optim.SGD([stored] + [p for p, _ in method.extra_params()], lr=cfg.effective_lr_img, momentum=0.5)

    def step(it):
        loss = method.loss(stored, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(stored, it)
    step(0)
    base = reset_peak()
    sync()
    t = time.perf_counter()
    for it in range(1, a["iters"] + 1):
        step(it)
    sync()
    sec = (time.perf_counter() - t) / a["iters"]
    return {"it_per_s": 1 / sec, "setup_s": setup_s, "peak_mb": peak_mb() - base}


def m_eval(a: dict) -> dict:
    """Images per second while training the evaluation networks, sequential vs batched."""
    import torch
    from pdd_engine.data import load_dataset
    from pdd_engine.evaluate import BatchedCurriculum, Curriculum, EvalProtocol, random_subset

    torch.set_num_threads(a["threads"])
    ds = load_dataset("digits")
    x, y = random_subset(ds, 0, a["ipc"], 0)
    proto = EvalProtocol(epochs=a["epochs"], models=a["models"], depth=2, width=a["width"])
    cls = BatchedCurriculum if a["batched"] else Curriculum
    cur = cls(ds, proto, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if a.get("channels_last"):  # sequential path only: NHWC weights and inputs
        for net in cur.nets:
            net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync()
    t = time.perf_counter()
    acc = cur.train_stage(x, y)
    sync()
    s = time.perf_counter() - t
    return {"images_per_s": a["models"] * a["epochs"] * len(x) / s, "seconds": s, "acc": sum(acc) / len(acc)}


def m_transition(a: dict) -> dict:
    """Cost of one PDD transition: a fresh network trained on U_{i-1}."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.evaluate import random_subset
    from pdd_engine.data import dataset_for
    from pdd_engine.progressive import Union, stage_context

    cfg = DistillConfig(transition_epochs=a["epochs"], transition="fresh")
    ds = dataset_for(cfg)
    x, y = random_subset(ds, 0, a["ipc"], 0)
    union = Union.empty(ds, torch.device("cpu"))
    union.add({"train_x": x, "train_y": y, "stored": x, "real_keep": union.keep}, None)
    ctx = stage_context(cfg, ds, 2, union=union)
    t = time.perf_counter()
    ctx.transition(ctx.new_model(0), 0)
    return {"seconds": time.perf_counter() - t, "union": len(x)}


def m_unroll(a: dict) -> dict:
    """Peak memory and time of one MTT loss + backward, full vs bounded unroll."""
    import torch
    from pdd_engine.augment import DSA
    from pdd_engine.methods.unroll import unroll_loss, unroll_loss_bounded, unroll_memory_bytes
    from pdd_engine.models import ConvNet

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = ConvNet(a["ch"], 10, a["size"], depth=a["depth"], width=a["width"]).to(dev)
    n = sum(p.numel() for p in net.parameters())
    start, target = torch.randn(n, device=dev) * 0.05, torch.randn(n, device=dev) * 0.05
    x = torch.randn(a["batch"], a["ch"], a["size"], a["size"], device=dev, requires_grad=True)
    y = torch.arange(a["batch"], device=dev) % 10
    lr = torch.tensor(0.01, device=dev, requires_grad=True)
    fn = unroll_loss_bounded if a["bounded"] else unroll_loss
    fn(net, start, target, x, y, lr, 1, None, DSA([]), 0).backward()  # warm-up allocations
    base = reset_peak()
    t = time.perf_counter()
    fn(net, start, target, x, y, lr, a["steps"], None, DSA(["crop"]), 1).backward()
    sync()
    est = unroll_memory_bytes(net, a["ch"], a["size"], a["batch"], 1 if a["bounded"] else a["steps"],
                              a["steps"] if a["bounded"] else 0)
    return {"peak_mb": peak_mb() - base, "seconds": time.perf_counter() - t, "estimate_mb": est / 2 ** 20}


CHILDREN = {"method": m_method, "eval": m_eval, "transition": m_transition, "unroll": m_unroll}


def child(name: str, **kw) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(kw)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip()[-500:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(title: str, head: list[str], rows: list[list]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "speed"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return 0

    import torch
    report = {"machine": machine()}
    md = [f"Machine: {report['machine']['cpus']} CPUs, torch {torch.__version__}, "
          f"{'GPU ' + report['machine']['cuda'] if report['machine']['cuda'] else 'CPU only'}.", ""]

    base = dict(dataset="digits", stages=1, ipc=10, iterations=100, num_experts=2, dm_pool=4)
    rows = []
    from pdd_engine.methods import REGISTRY
    for m in REGISTRY:  # every registered base method
        r = child("method", cfg={**base, "method": m}, iters=args.iters)
        rows.append([m, f"{r['it_per_s']:.2f}", f"{r['setup_s']:.1f}", f"{r['peak_mb']:.0f}"])
        report[f"method_{m}"] = r
    md.append(table("Distillation speed (digits, IPC 10, stage 1, width 32)", ["method", "iterations/s", "set-up s", "peak MB over set-up"], rows))

    rows = []
    for threads in (1, 2):
        for batched in (False, True):
            r = child("eval", batched=batched, threads=threads, ipc=10, epochs=100, models=5, width=32)
            report[f"eval_t{threads}_{'batched' if batched else 'sequential'}"] = r
            rows.append([threads, "batched (vmap)" if batched else "sequential", f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f}",
                         f"{100 * r['acc']:.1f}"])
    r = child("eval", batched=False, threads=2, ipc=10, epochs=100, models=5, width=32, channels_last=True)
    report["eval_t2_sequential_channels_last"] = r
    rows.append([2, "sequential, channels-last", f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f}", f"{100 * r['acc']:.1f}"])
    md.append(table("Evaluation throughput (5 ConvNets, 100 digits images, 100 epochs)",
                    ["threads", "path", "images/s", "seconds", "mean acc %"], rows))

    r = child("transition", epochs=50, ipc=8)
    report["transition"] = r
    md.append(table("PDD transition", ["union images", "epochs", "seconds"], [[r["union"], 50, f"{r['seconds']:.2f}"]]))

    rows = []
    for steps in (5, 10, 20, 40):
        for bounded in (False, True):
            r = child("unroll", bounded=bounded, steps=steps, batch=100, ch=3, size=32, depth=3, width=32)
            report[f"unroll_{steps}_{'bounded' if bounded else 'full'}"] = r
            rows.append([steps, "bounded" if bounded else "full", f"{r['peak_mb']:.0f}", f"{r['estimate_mb']:.0f}", f"{r['seconds']:.2f}"])
    md.append(table("MTT unroll memory vs steps (batch 100 of 32x32x3, ConvNet-3 width 32)",
                    ["syn_steps", "unroll", "measured peak MB", "estimate MB", "seconds"], rows))

    text = "\n".join(md)
    write_report(args.out, report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
