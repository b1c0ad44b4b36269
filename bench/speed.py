"""Speed and memory on this machine: methods, evaluation, transition, MTT unroll memory, threads,
and (``--only variants``) bf16 autocast and ``torch.compile`` against plain float32; ``--only reference``
the reference code's configurations, ``--only chunks`` those rows by chunk size, ``--only ceiling`` the
floor this machine's arithmetic puts under them.

    .venv/bin/python bench/speed.py            # prints markdown tables, writes bench/results/speed.json/.md
    .venv/bin/python bench/speed.py --only variants --out bench/results/speed_variants
    .venv/bin/python bench/speed.py --tiny     # seconds: every section at toy sizes (a check, not a figure)

Every measurement runs in its own subprocess, so its peak memory (resident set growth over the
process's state after set-up, or CUDA's peak allocation on a GPU) is its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.common import RESULTS, append_row, cli_default_run, commit, machine, machine_line, now, write_report  # noqa: E402


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


def device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision(variant: str) -> str:
    """The engine precision a variant stands for: ``bf16`` is bfloat16 autocast (a run's ``precision`` for
    the matching, ``eval_precision`` for the evaluation), anything else float32."""
    return "bfloat16" if variant == "bf16" else "float32"


# -- measurements (each runs in a child process) ---------------------------------------------

def m_method(a: dict) -> dict:
    """Seconds per distillation iteration and peak memory for one method (stage 1, fixed config)."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.methods import get_method
    from pdd_engine.data import dataset_for
    from pdd_engine.device import arithmetic, resolve_device
    from pdd_engine.progressive import stage_context

    if "threads" in a:
        torch.set_num_threads(a["threads"])
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
        with arithmetic(precision(a["variant"]) if "variant" in a else cfg.precision, device):  # as a run does
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
    return {"it_per_s": 1 / sec, "setup_s": setup_s, "peak_mb": peak_mb() - base, "process_peak_mb": peak_mb()}


def m_eval(a: dict) -> dict:
    """Images per second while training the evaluation networks, sequential vs batched."""
    import torch
    from pdd_engine.data import load_dataset
    from pdd_engine.evaluate import BatchedCurriculum, Curriculum, EvalProtocol, random_subset

    torch.set_num_threads(a["threads"])
    ds = load_dataset(a.get("dataset", "digits"), max_train=a.get("max_train"))
    x, y = random_subset(ds, 0, a["ipc"], 0)
    variant = a.get("variant", "plain")
    proto = EvalProtocol(epochs=a["epochs"], models=a["models"], depth=a.get("depth", 2), width=a["width"],
                         precision=precision(variant))  # the networks train and test in it, as in a run
    if a.get("plain"):
        return plain_eval(ds, x, y, proto)
    cls = BatchedCurriculum if a["batched"] else Curriculum
    cur = cls(ds, proto, device())
    if a.get("channels_last"):  # sequential path only: NHWC weights and inputs
        for net in cur.nets:
            net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant == "compile":  # the networks' forward (sequential) or the vmapped call (batched)
        if a["batched"]:
            cur.logits = torch.compile(cur.logits)
        else:
            cur.nets = [torch.compile(net) for net in cur.nets]
    times, accs = [], []
    for _ in range(a.get("stages", 1)):  # stage 2 shows the steady state (compilation happens in stage 1)
        sync()
        t = time.perf_counter()
        cur.fit(x, y)  # training alone, timed apart from the test pass that follows
        sync()
        train_s = time.perf_counter() - t
        acc = cur.test_accuracy()
        sync()
        times.append((train_s, time.perf_counter() - t - train_s))
        accs.append(sum(acc) / len(acc))
    train_s, test_s = times[-1]
    n = a["models"] * a["epochs"] * len(x)
    return {"images_per_s": n / (train_s + test_s), "seconds": train_s + test_s, "acc": accs[-1],
            "first_stage_s": sum(times[0]), "test_s": test_s, "train_images_per_s": n / train_s}


def plain_eval(ds, x, y, proto) -> dict:
    """The reference's evaluation protocol as plain PyTorch: one network after another, a DataLoader,
    a per-sample DSA draw per batch, SGD with momentum, lr x0.1 after half, then the test split. The
    networks are not chunked (models.CHUNK_BYTES is the engine's), so this is the loop the reference runs."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    from pdd_engine.models import ConvNet
    from pdd_engine.training import draw_seed

    aug, g = proto.aug, torch.Generator().manual_seed(0)
    t, test_s = time.perf_counter(), 0.0
    accs = []
    for k in range(proto.models):
        torch.manual_seed(k)
        net = ConvNet(ds.channels, ds.num_classes, ds.size, proto.depth, proto.width, proto.norm)
        net.chunk_bytes = None
        opt = torch.optim.SGD(net.parameters(), lr=proto.lr, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(TensorDataset(x, y), batch_size=proto.batch, shuffle=True)
        for epoch in range(proto.epochs):
            if epoch == proto.epochs // 2:
                opt.param_groups[0]["lr"] = proto.lr * 0.1
            for xb, yb in loader:
                loss = F.cross_entropy(net(aug(xb, draw_seed(g), siamese=False)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        t_test = time.perf_counter()
        with torch.no_grad():
            net.eval()
            pred = torch.cat([net(xb).argmax(1) for xb in ds.x_test.split(256)])
        accs.append((pred == ds.y_test).float().mean().item())
        test_s += time.perf_counter() - t_test
    s = time.perf_counter() - t
    n = proto.models * proto.epochs * len(x)
    return {"images_per_s": n / s, "seconds": s, "acc": sum(accs) / len(accs), "first_stage_s": s,
            "test_s": test_s, "train_images_per_s": n / (s - test_s)}


def m_expert(a: dict) -> dict:
    """Seconds per expert step (batch 256 of real images, per-sample DSA, SGD), and per epoch of the set."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.data import dataset_for
    from pdd_engine.methods.mtt import EXPERT_BATCH
    from pdd_engine.progressive import stage_context
    from pdd_engine.training import train_epochs

    cfg = DistillConfig.make(a["cfg"], other_methods="drop")
    ds = dataset_for(cfg)
    ctx = stage_context(cfg, ds)
    net = ctx.new_model(0)
    n = a["steps"] * EXPERT_BATCH
    x, y = ds.x_train[:n], ds.y_train[:n]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0)
    train_epochs(net, x[:EXPERT_BATCH], y[:EXPERT_BATCH], 1, opt, 0.01, EXPERT_BATCH, ctx.aug, 0, decay_at_half=False)
    t = time.perf_counter()
    train_epochs(net, x, y, 1, opt, 0.01, EXPERT_BATCH, ctx.aug, 1, decay_at_half=False)
    step = (time.perf_counter() - t) / a["steps"]
    return {"step_s": step, "epoch_s": step * -(-len(ds.x_train) // EXPERT_BATCH), "train": len(ds.x_train)}


def m_experts(a: dict) -> dict:
    """Seconds to train a stage's experts (each ``epochs`` passes over the real pool at batch 256), one
    after another and together (vmap), from the same shared inputs as a run; and how far apart the two
    trajectories end."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.data import dataset_for
    from pdd_engine.methods.mtt import train_experts
    from pdd_engine.progressive import stage_context

    torch.set_num_threads(a.get("threads", 2))
    cfg = DistillConfig.make(a["cfg"], other_methods="drop")
    shared = stage_context(cfg, dataset_for(cfg)).unit_shared()
    ids = list(range(cfg.params.num_experts))
    train_experts(shared, ids[:2])  # warm-up: allocator, kernels, vmap's tracing
    t = time.perf_counter()
    alone = torch.cat([train_experts(shared, [e]) for e in ids])
    seq = time.perf_counter() - t
    t = time.perf_counter()
    together = train_experts(shared, ids)
    bat = time.perf_counter() - t
    return {"sequential_s": seq, "batched_s": bat, "speedup": seq / bat, "experts": len(ids),
            "real_images": len(shared["idx"]), "max_abs_diff": float((alone - together).abs().max())}


def m_run(a: dict) -> dict:
    """A whole run (every stage, its evaluations, the base method's comparison) in a fresh cache:
    wall seconds, the CPU seconds of all its threads (with the wall and the cores: how busy it kept the
    machine), the process's peak resident memory, the reference's whole-run figure."""
    import os
    import tempfile
    from pdd_engine import DistillConfig, distill
    from pdd_engine.device import resolved

    with tempfile.TemporaryDirectory() as cache:
        cfg = DistillConfig.make({**a["cfg"], "cache_dir": cache}, other_methods="drop")
        ran = resolved(cfg)  # auto arithmetic: what this processor runs
        t, cpu = time.perf_counter(), time.process_time()
        done = distill(cfg)
        last = done.accuracies[-1]
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        return {"seconds": seconds, "cpu_s": cpu, "busy": cpu / (seconds * len(os.sched_getaffinity(0))),
                "peak_mb": peak_mb(), "acc": last["mean"],
                "random": last["random_mean"], "base": last["base_mean"], "epochs": last.get("base_epochs_mean"),
                "arithmetic": f"{ran.precision}/{ran.eval_precision}"}


def m_transition(a: dict) -> dict:
    """Cost of PDD's transition at the default run's stage 2 (digits, U_1 of ``ipc`` per class, chain):
    DM's pool of ``pool`` networks brought through it one by one and together (vmap), as
    :meth:`StageContext.transitioned` chooses; and how far apart the two pools end."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.evaluate import random_subset
    from pdd_engine.data import dataset_for
    from pdd_engine.progressive import Union, stage_context
    from pdd_engine.training import trains_together

    torch.set_num_threads(a.get("threads", 2))
    cfg = DistillConfig(transition_epochs=a["epochs"])
    ds = dataset_for(cfg)
    x, y = random_subset(ds, 0, a["ipc"], 0)
    union = Union.empty(ds, torch.device("cpu"))
    union.add({"train_x": x, "train_y": y, "stored": x, "real_keep": union.keep}, cfg.eval_lr)
    ctx = stage_context(cfg, ds, 2, union=union)
    seeds = list(range(a["pool"]))
    for together in (False, True):  # warm-up: allocator, kernels, vmap's tracing
        ctx.transitioned(seeds[:2], together=together)
    out = {"union": len(x), "pool": len(seeds)}
    for how, together in (("sequential", False), ("batched", True)):
        t = time.perf_counter()
        out[how] = ctx.transitioned(seeds, together=together)
        out[f"{how}_s"] = time.perf_counter() - t
    diff = max(float((p - q).abs().max()) for one, other in zip(out.pop("sequential"), out.pop("batched"))
               for p, q in zip(one.parameters(), other.parameters()))
    auto = trains_together(None, cfg.norm, len(seeds), ctx.device)
    return {**out, "speedup": out["sequential_s"] / out["batched_s"], "max_abs_diff": diff,
            "automatic": "together" if auto else "one by one"}


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


def m_executor(a: dict) -> dict:
    """One stage's units on one executor: MTT's experts, a 5-network evaluation (one network per unit,
    as a run trains them where they are not vmapped together), and the per-task overhead."""
    import torch
    from pdd_engine import DistillConfig
    from pdd_engine.data import dataset_for
    from pdd_engine.evaluate import EvalProtocol, random_subset
    from pdd_engine.executor import LocalExecutor, RayExecutor, ping
    from pdd_engine.methods.mtt import expert_trajectories
    from pdd_engine.progressive import curriculum_step, eval_shared, stage_context

    torch.set_num_threads(1)
    if a["executor"] == "ray":
        import ray
        ray.init(num_cpus=a["workers"], include_dashboard=False, log_to_driver=False)
        ex = RayExecutor()
    else:
        ex = LocalExecutor()
    cfg = DistillConfig.make(dict(method="mtt", stages=1, ipc=10, num_experts=a["experts"],
                                  max_start_epoch=a["epochs"] - 1, expert_epochs=1))
    ds = dataset_for(cfg)
    ctx = stage_context(cfg, ds, executor=ex)
    expert_trajectories(ctx)  # start-up (Ray: worker processes, the object store) outside the timing
    t = time.perf_counter()
    trajectories = expert_trajectories(ctx)
    experts_s = time.perf_counter() - t
    x, y = random_subset(ds, 0, 10, cfg.seed)
    proto = EvalProtocol(epochs=a["eval_epochs"], models=5)
    shared = eval_shared(ds, proto, torch.device("cpu"), False)
    t = time.perf_counter()
    evaluated = ex.map(curriculum_step, [(None, x, y, None, [k]) for k in range(proto.models)], shared)
    eval_s = time.perf_counter() - t
    t = time.perf_counter()
    ex.map(ping, list(range(a["pings"])), {})
    per_task = (time.perf_counter() - t) / a["pings"]
    return {"experts_s": experts_s, "eval_s": eval_s, "per_task_ms": 1000 * per_task,
            "checksum": float(trajectories.sum()), "eval_acc": [acc for _, part in evaluated for acc in part]}


def m_peak(a: dict) -> dict:
    """How fast this machine runs the reference network's convolutions, and the floor that puts under a
    forward pass and a training step: each convolution (forward; backward for the weights and, but in the
    first layer, the input) timed alone at a few batch sizes in float32 and bf16, its best rate kept. The
    floor per image is each convolution's FLOPs at its own best rate, summed, with nothing else (norms,
    ReLUs, pools, augmentation, the optimiser, the classifier) taking time: an empirical ceiling, what
    oneDNN's kernels reach here, not the data sheet's. A 2048 x 2048 matrix product is shown beside."""
    import copy

    import torch
    from pdd_engine.models import ConvNet

    torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    net = ConvNet(1, 10, a["size"], a["depth"], a["width"])
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    shapes, x = [], torch.zeros(1, 1, a["size"], a["size"])
    for block in net.features:  # each convolution's input shape, for one image
        if isinstance(block, torch.nn.Conv2d):
            shapes.append(x.shape[1:])
        x = block(x)

    def rate(fn, flop: float) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(a["reps"]):
            fn()
        return flop * a["reps"] / (time.perf_counter() - t) / 1e9

    out = {}
    for prec, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        m = torch.randn(2048, 2048, dtype=dt)
        layers, floor = [], {"forward": 0.0, "train": 0.0, "train_input_grad": 0.0}
        for i, (conv, shape) in enumerate(zip(convs, shapes)):
            layer = copy.deepcopy(conv).to(dt)  # the engine's convolution (models.Conv2d), without its bias
            layer.bias = None
            w = layer.weight
            fwd = bwd_w = bwd_x = 0.0
            for n in a["batches"]:
                xi = torch.randn(n, *shape, dtype=dt, requires_grad=True)
                with torch.no_grad():
                    flop = 2 * layer(xi).numel() * w[0].numel() / n  # per image
                    fwd = max(fwd, rate(lambda: layer(xi), flop * n))
                y = layer(xi)
                g = torch.randn_like(y)
                bwd_w = max(bwd_w, rate(lambda: torch.autograd.grad(y, [w], g, retain_graph=True), flop * n))
                bwd_x = max(bwd_x, rate(lambda: torch.autograd.grad(y, [xi, w], g, retain_graph=True), 2 * flop * n))
            layers.append({"mflop": flop / 1e6, "forward": fwd, "backward_weights": bwd_w, "backward": bwd_x})
            floor["forward"] += flop / fwd
            floor["train"] += flop / fwd + (2 * flop / bwd_x if i else flop / bwd_w)
            floor["train_input_grad"] += flop / fwd + 2 * flop / bwd_x
        out[prec] = {"matmul_gflops": rate(lambda: m @ m, 2 * 2048 ** 3), "layers": layers,
                     "floor_s_per_image": {k: v / 1e9 for k, v in floor.items()}}
    return out


CHILDREN = {"method": m_method, "eval": m_eval, "transition": m_transition, "unroll": m_unroll,
            "executor": m_executor, "expert": m_expert, "experts": m_experts, "run": m_run, "peak": m_peak}


def child(name: str, **kw) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.speed", "--child", name, json.dumps(kw)], capture_output=True, text=True,
                         cwd=ROOT)
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
    ap.add_argument("--only", type=lambda v: v.split(","), default=["methods", "eval", "transition", "unroll"],
                    help=f"sections to run, comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks every section runs, in seconds")
    ap.add_argument("--out", default=None, help="also write OUT.json and OUT.md (the sections' full tables)")
    ap.add_argument("--results", type=Path, default=CSV, help="the CSV rows are appended to (default bench/results/speed.csv)")
    ap.add_argument("--reference", help="JSON of the reference code's figures on this machine (row -> value), "
                                        "shown beside the engine's in --only reference")
    ap.add_argument("--repeats", type=int, default=3, help="--only arithmetic: runs of each arithmetic, alternating")
    ap.add_argument("--precision-at", type=lambda v: [tuple(map(int, c.split("x"))) for c in v.split(",")],
                    default=[(8, 32), (8, 128), (28, 32), (28, 128)],
                    help="--only precision: image size x width pairs to time (default 8x32,8x128,28x32,28x128)")
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child[1])
        if a.get("unchunked"):
            unchunk()
        if a.get("chunk_mb"):
            import pdd_engine.models
            pdd_engine.models.CHUNK_BYTES = int(a["chunk_mb"] * 2 ** 20)
        if not a.get("plain"):  # the engine's allocator settings, as in a run; the plain loop runs as PyTorch does
            from pdd_engine.device import tune_allocator
            tune_allocator()
        print(json.dumps(CHILDREN[args.child[0]](a)))
        return 0
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")

    import torch
    report = {"machine": machine(), "tiny": args.tiny}
    md = [f"Machine: {report['machine']['cpus']} CPUs, torch {torch.__version__}, "
          f"{'GPU ' + report['machine']['cuda'] if report['machine']['cuda'] else 'CPU only'}"
          f"{' (--tiny: toy sizes, not figures)' if args.tiny else ''}.", ""]
    line, sha = machine_line(report["machine"]), commit()
    for name in args.only:  # rows are appended after each section: a run cut short keeps what it did
        before = set(report)
        md.append(SECTIONS[name](args, report))
        for key in [k for k in report if k not in before]:
            append_row(args.results, COLUMNS, {"section": name, "row": key, "figures": json.dumps(report[key], default=str),
                                               "tiny": args.tiny, "machine": line, "commit": sha, "date": now()})
        if args.out:
            write_report(args.out, report, "\n".join(md))
    print("\n".join(md))
    return 0


COLUMNS = ["section", "row", "figures", "tiny", "machine", "commit", "date"]
CSV = RESULTS / "speed.csv"


def speed_table(rows: list[dict]) -> str:
    """The newest measurement of each (section, row) on each machine (a figure of one processor does not replace
    another's), its figures as name = value."""
    latest = {}
    for r in rows:
        if r["tiny"] != "True":
            latest[(r["section"], r["row"], r["machine"])] = r
    lines = ["| section | measured | figures | machine | commit |", "| --- | --- | --- | --- | --- |"]
    for (section, row, _), r in latest.items():
        figures = json.loads(r["figures"])
        shown = "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)) if isinstance(figures, dict) else figures
        lines.append(f"| {section} | {row} | {shown} | {r['machine']} | {r['commit']} |")
    return "\n".join(lines)


def sizes(args, full: dict, tiny: dict) -> dict:
    return tiny if args.tiny else full


def section_methods(args, report: dict) -> str:

    base = dict(dataset="digits", stages=1, ipc=10, iterations=100, num_experts=2, dm_pool=4,
                **sizes(args, {}, {"max_start_epoch": 1, "expert_epochs": 1, "outer_loop": 2, "inner_loop": 2}))
    iters = 2 if args.tiny else args.iters
    rows = []
    from pdd_engine.methods import REGISTRY
    for m in REGISTRY:  # every registered base method
        r = child("method", cfg={**base, "method": m}, iters=iters)
        rows.append([m, f"{r['it_per_s']:.2f}", f"{r['setup_s']:.1f}", f"{r['peak_mb']:.0f}"])
        report[f"method_{m}"] = r
    return table("Distillation speed (digits, IPC 10, stage 1, width 32)", ["method", "iterations/s", "set-up s", "peak MB over set-up"], rows)


def section_eval(args, report: dict) -> str:
    epochs = 3 if args.tiny else 100
    rows = []
    for threads in (1, 2):
        for batched in (False, True):
            r = child("eval", batched=batched, threads=threads, ipc=10, epochs=epochs, models=5, width=32)
            report[f"eval_t{threads}_{'batched' if batched else 'sequential'}"] = r
            rows.append([threads, "batched (vmap)" if batched else "sequential", f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f}",
                         f"{100 * r['acc']:.1f}"])
    r = child("eval", batched=False, threads=2, ipc=10, epochs=epochs, models=5, width=32, channels_last=True)
    report["eval_t2_sequential_channels_last"] = r
    rows.append([2, "sequential, channels-last", f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f}", f"{100 * r['acc']:.1f}"])
    return table(f"Evaluation throughput (5 ConvNets, 100 digits images, {epochs} epochs)",
                 ["threads", "path", "images/s", "seconds", "mean acc %"], rows)


# The torch threads of each lane of a CPU run on 2 cores (progressive.SideLane): the thread count at which
# the automatic choices below are made for the machine the product is tried on first.
LANE_THREADS = 1


def auto_variant(size: int, width: int) -> str:
    """The variant a run's ``auto`` arithmetic is on this machine for ``size``-px images at ``width``: ``bf16``
    where it runs bf16 natively and the network is large enough to gain from it."""
    import torch

    from pdd_engine.device import resolve_precision
    return "bf16" if resolve_precision("auto", torch.device("cpu"), width * size * size) == "bfloat16" else "plain"


def section_eval_widths(args, report: dict) -> str:
    """Batched (vmap) against sequential evaluation by network width and image size (digits, 8 px,
    ConvNet-2; MNIST, 28 px, ConvNet-3, where it is on this machine), at a lane's threads and in the
    arithmetic a run's ``auto`` resolves to: where the automatic choice of ``eval_batched``
    (:func:`pdd_engine.evaluate.use_batched`) switches on a CPU."""
    from pdd_engine.datasets import find
    epochs, widths = (2, (8, 16)) if args.tiny else (40, (32, 64, 128))
    sets = [("digits", 2)] + ([("mnist", 3)] if find("mnist").available(None) and not args.tiny else [])
    rows = []
    for data, depth in sets:
        for width in widths:
            got, variant = {}, auto_variant(find(data).shape[1], width)
            for batched in (False, True):
                r = attempt("eval", batched=batched, threads=LANE_THREADS, ipc=10, epochs=epochs, models=5, width=width,
                            depth=depth, dataset=data, stages=2, variant=variant)  # the second stage: warmed up
                report[f"eval_{data}_width{width}_{'batched' if batched else 'sequential'}"] = {**r, "variant": variant}
                got[batched] = r.get("train_images_per_s")
            ratio = got[True] / got[False] if got[True] and got[False] else 0
            rows.append([data, width, variant, *(f"{got[b]:.0f}" if got[b] else "failed" for b in (False, True)),
                         f"{ratio:.2f}"])
    return table(f"Evaluation training images/s by width (5 networks, 100 images, {epochs} epochs, second of two "
                 f"stages, {LANE_THREADS} thread(s), the arithmetic auto gives each; test pass excluded)",
                 ["data", "width", "arithmetic", "sequential", "batched (vmap)", "batched / sequential"], rows)


def section_experts(args, report: dict) -> str:
    """MTT's experts of one stage trained one after another against together (vmap), by data and width:
    where the automatic choice of ``batched_experts`` (:func:`pdd_engine.training.trains_together`)
    should switch on this machine."""
    from pdd_engine.datasets import find
    # (data, epochs, widths, more settings): MNIST's 10k pool at the width of its benchmark rows only (an
    # epoch there is 40 steps; wider networks took tens of minutes for the pair on 2 cores)
    sets = [("digits", 1, (8,), {})] if args.tiny else (
        [("digits", 3, (16, 32, 64), {})] + ([("mnist", 1, (32,), {"max_train": 10000})] if find("mnist").available(None) else []))
    rows = []
    for data, epochs, widths, more in sets:
        for width in widths:
            cfg = dict(dataset=data, method="mtt", stages=1, ipc=10, width=width, num_experts=5,
                       max_start_epoch=epochs - 1, expert_epochs=1, **more)
            r = attempt("experts", cfg=cfg, threads=LANE_THREADS)
            report[f"experts_{data}_width{width}"] = r
            rows.append([data, width, epochs, r.get("real_images", "-"), *(f"{r[k]:.1f}" if k in r else "failed"
                         for k in ("sequential_s", "batched_s")), f"{r['speedup']:.2f}" if "speedup" in r else "-",
                         f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"])
    return table(f"MTT experts of one stage: 5 experts at batch 256, {LANE_THREADS} thread(s)",
                 ["data", "width", "epochs", "real images", "one by one s", "together (vmap) s", "speed-up", "largest weight difference"], rows)


def section_transition(args, report: dict) -> str:
    """The transition of DM's pool at the default run's stage 2, one by one against together (vmap)."""
    epochs, pool = (2, 4) if args.tiny else (50, 16)
    r = attempt("transition", epochs=epochs, ipc=5, pool=pool, threads=2)
    report["transition"] = r
    return table(f"PDD transition: DM's pool of {pool} networks at the default run's stage 2 (digits, {epochs} epochs, 2 threads)",
                 ["union images", "one by one s", "together (vmap) s", "speed-up", "largest weight difference", "automatic"],
                 [cells(r, lambda r: [r["union"], f"{r['sequential_s']:.2f}", f"{r['batched_s']:.2f}", f"{r['speedup']:.2f}",
                                      f"{r['max_abs_diff']:.1e}", r["automatic"]], 6)])


# issue 30's MTT target: PDD+MTT P = 2 with its comparisons on MNIST, the real pool capped at 10,000 images,
# width 32 (the quality table's MNIST MTT rows, which run 3 seeds side by side at one thread each)
MTT_MNIST = dict(dataset="mnist", max_train=10000, method="mtt", width=32, stages=2, ipc=10)
TINY_RUN = {"iterations": 2, "eval_epochs": 2, "max_train": 500}


def whole_runs(args, report: dict, runs: dict[str, dict], title: str) -> str:
    """Each named configuration run once alone in a fresh cache at seed 0 (2 threads): what a user waits,
    and what the run says at the end."""
    rows = []
    for name, cfg in runs.items():
        r = attempt("run", cfg=dict(cfg, **(TINY_RUN if args.tiny else {})))
        report[name] = r
        pct = lambda k: f"{100 * r[k]:.1f}" if r.get(k) is not None else "–"  # noqa: E731
        rows.append([name] + cells(r, lambda r: [f"{r['seconds']:.0f}", f"{r['cpu_s']:.0f} ({100 * r['busy']:.0f} %)",
                                                 pct("acc"), pct("base"), pct("epochs"), pct("random"), r["arithmetic"],
                                                 f"{r['peak_mb']:.0f}"], 8))
    return table(title, ["run", "seconds", "CPU s (of the cores' time)", "PDD %", "P = 1 %", "P = 1 same epochs %",
                         "random %", "arithmetic", "peak MB"], rows)


def section_presets(args, report: dict) -> str:
    """The presets the studio offers on a CPU (the default run and the one it suggests next)."""
    from pdd_engine.config import PRESETS
    return whole_runs(args, report, {f"preset_{n}": PRESETS[n] for n in ("cpu-quick", "cpu-showcase")},
                      "Presets, one run alone (seed 0, 2 threads, fresh cache)")


def section_arithmetic(args, report: dict) -> str:
    """The default run (the ``cpu-quick`` preset) whole, in float32 and in bf16, alternating run by run (this
    host's speed drifts between minutes by as much as their difference): which arithmetic ``auto`` should give
    it on this processor (``pdd_engine.device.resolve_precision``)."""
    from pdd_engine.config import PRESETS
    cfg = dict(PRESETS["cpu-quick"], **(TINY_RUN if args.tiny else {}))
    runs: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(1 if args.tiny else args.repeats):
        for p, seconds in runs.items():
            r = attempt("run", cfg=dict(cfg, precision=p, eval_precision=p))
            if "failed" in r:
                return table("The default run by arithmetic", ["arithmetic", "failed"], [[p, r["failed"]]])
            seconds.append(r["seconds"])
    means = {p: statistics.mean(v) for p, v in runs.items()}
    report["arithmetic default run"] = {**{f"{p}_runs": v for p, v in runs.items()}, **means,
                                        "bf16_speedup": means["float32"] / means["bfloat16"]}
    rows = [[p, ", ".join(f"{v:.1f}" for v in runs[p]), f"{means[p]:.1f}"] for p in runs]
    return table(f"The default run by arithmetic (cpu-quick, seed 0, 2 threads, fresh cache, alternating; bf16 "
                 f"speed-up {means['float32'] / means['bfloat16']:.2f}x)", ["arithmetic", "seconds, run by run", "mean s"], rows)


def section_mtt_mnist(args, report: dict) -> str:
    """PDD+MTT P = 2 on MNIST (10,000-image pool, width 32) with its P = 1, P = 1 same epochs and random
    curriculum: the paper's base at a size 2 cores afford, alone (experts included: a fresh cache)."""
    return whole_runs(args, report, {"mtt_mnist_p2": MTT_MNIST},
                      "PDD+MTT P = 2 on MNIST (pool 10,000, width 32), one run alone (seed 0, 2 threads, fresh cache)")


def section_openmp(args, report: dict) -> str:
    """The CLI's default run under each OpenMP wait setting (what ``settings.openmp_defaults`` chooses
    between), with the machine otherwise idle and beside as many busy processes as it has cores (a machine
    shared with other work): OpenMP's own default spins long, which stalls threads whose neighbours are
    descheduled. One run each, fresh cache; a run past the timeout is reported as such."""
    import os
    from pdd_engine.settings import SPIN_COUNT
    settings = {"OpenMP default (spin 300,000)": {"GOMP_SPINCOUNT": "300000"},
                f"the CLI's (spin {SPIN_COUNT:,})": {"GOMP_SPINCOUNT": str(SPIN_COUNT)},
                "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
    cores, timeout = len(os.sched_getaffinity(0)), 60 if args.tiny else 300
    rows = []
    for load in ("idle", "busy"):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores if load == "busy" else 0)]
        try:
            for name, env in settings.items():
                r = cli_default_run(env, ["--iterations", "2", "--eval-epochs", "2"] if args.tiny else [], timeout)
                r = {"seconds": r["wall_s"], **({"timed_out_s": timeout} if r["wall_s"] is None else {})}
                report[f"openmp {load}: {name}"] = {**r, "busy_processes": len(hogs)}
                rows.append([load, name, f"{r['seconds']:.1f}" if r["seconds"] else f"> {timeout}"])
        finally:
            for h in hogs:
                h.kill()
    return table(f"The default run in the CLI by OpenMP wait setting ({cores} cores; busy: {cores} busy processes beside it)",
                 ["machine", "setting", "seconds"], rows)


def section_lanes(args, report: dict) -> str:
    """The CLI's default run with the side lane (progressive.SideLane: the random curriculum and the base
    comparison in a second thread, half the torch threads each) and without it, at the cores' threads and at
    one thread, interleaved over rounds so that the machine's drift falls on every setting alike."""
    import os
    cores = len(os.sched_getaffinity(0))
    settings = {f"two lanes, {max(1, cores // 2)} thread(s) each (the default)": {"PDD_SIDE_LANE": "1"},
                f"one lane, {cores} threads": {"PDD_SIDE_LANE": "0"},
                "one lane, 1 thread": {"PDD_SIDE_LANE": "0", "OMP_NUM_THREADS": "1"}}
    flags = ["--iterations", "2", "--eval-epochs", "2"] if args.tiny else []
    walls: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(1 if args.tiny else 3):
        for name, env in settings.items():
            r = cli_default_run(env, flags)
            walls[name].append(r["wall_s"])
            report.setdefault(f"lanes: {name}", {"rounds": []})["rounds"].append(r)
    rows = []
    for name, w in walls.items():
        report[f"lanes: {name}"].update(seconds=statistics.mean(w), seconds_std=statistics.pstdev(w))
        rows.append([name, " / ".join(f"{x:.1f}" for x in w), f"{statistics.mean(w):.1f} ± {statistics.pstdev(w):.1f}"])
    return table(f"The default run in the CLI with and without the side lane ({cores} cores, fresh cache each)",
                 ["threads", "seconds, each round", "mean ± std"], rows)


def section_unroll(args, report: dict) -> str:
    rows = []
    for steps in ((2,) if args.tiny else (5, 10, 20, 40)):
        for bounded in (False, True):
            r = child("unroll", bounded=bounded, steps=steps, batch=100, ch=3, size=32, depth=3, width=32)
            report[f"unroll_{steps}_{'bounded' if bounded else 'full'}"] = r
            rows.append([steps, "bounded" if bounded else "full", f"{r['peak_mb']:.0f}", f"{r['estimate_mb']:.0f}", f"{r['seconds']:.2f}"])
    return table("MTT unroll memory vs steps (batch 100 of 32x32x3, ConvNet-3 width 32)",
                 ["syn_steps", "unroll", "measured peak MB", "estimate MB", "seconds"], rows)


def attempt(name: str, **kw) -> dict:
    """A child's result, or its failure as a row (a variant the platform cannot run is a finding)."""
    try:
        return child(name, **kw)
    except RuntimeError as e:
        return {"failed": str(e).splitlines()[-1][:120]}


def cells(r: dict, measured, width: int = 3) -> list:
    """A row's measured cells (``measured(r)``), or its failure in the first of ``width`` cells."""
    return [f"failed: {r['failed']}"] + [""] * (width - 1) if "failed" in r else measured(r)


def section_variants(args, report: dict) -> str:
    """bf16 autocast and torch.compile against plain float32, on DM and MTT iterations and on the
    evaluation (accuracy shown: a variant is only worth keeping if it does not change it). Compiled
    rows come last: they are the slowest to set up."""
    tiny = args.tiny
    cfg = dict(dataset="digits", stages=1, ipc=10, iterations=100, num_experts=2, dm_pool=4,
               **sizes(args, {"width": 128}, {"max_start_epoch": 1, "expert_epochs": 1, "width": 32}))
    ev = dict(ipc=10, epochs=3 if tiny else 100, models=5, width=32 if tiny else 128, threads=2, stages=2)
    rows = []
    for m in ("dm",) if tiny else ("dm", "mtt"):
        for v in ("plain", "bf16"):  # MTT's unroll differentiates through gradients: no compile
            r = attempt("method", cfg={**cfg, "method": m}, iters=2 if tiny else args.iters, variant=v)
            report[f"variant_{m}_{v}"] = r
            rows.append([f"{m} iteration", v] + cells(r, lambda r: [f"{r['it_per_s']:.2f} it/s", "–", "–"]))
    paths = (True,) if tiny else (True, False)
    for v in ("plain", "bf16") if tiny else ("plain", "bf16", "compile"):
        for batched in paths:
            r = attempt("eval", batched=batched, variant=v, **ev)
            report[f"variant_eval_{'batched' if batched else 'sequential'}_{v}"] = r
            path = "batched (vmap)" if batched else "sequential"
            rows.append([f"evaluation, {path}", v] + cells(r, lambda r: [
                f"{r['images_per_s']:.0f} images/s", f"{100 * r['acc']:.1f}", f"{r['first_stage_s'] - r['seconds']:+.1f}"]))
    return table(f"Precision and compilation (digits; methods: width {cfg['width']}; evaluation: 5 ConvNets width "
                 f"{ev['width']}, 100 images, {ev['epochs']} epochs, second stage timed)",
                 ["what", "variant", "speed", "mean acc %", "first-stage extra s (compile)"], rows)


def section_precision(args, report: dict) -> str:
    """float32 against bf16 autocast at one torch thread (what each lane of a 2-core run has), by image
    size and network width: where bf16 pays on this processor. Small images at a small width are mostly
    elementwise work (norms, pooling), where bf16 gains little or loses; wide convolutions are where it pays.
    (A rule for ``auto`` that kept digits at width 32 in float32 left the default run's time unchanged,
    both lanes busy, so ``auto`` stays a property of the processor: issue 30's closing notes.)"""
    rows = []
    data = {8: dict(dataset="digits"), 28: dict(dataset="mnist", max_train=2000)}
    for size, width in [(8, 16)] if args.tiny else args.precision_at:
        ds, depth = data[size], 2 if size < 16 else 3
        cfg = dict(stages=1, ipc=10, iterations=100, num_experts=2, dm_pool=4, width=width, depth=depth, **ds,
                   **sizes(args, {}, {"max_start_epoch": 1, "expert_epochs": 1}))
        for m in ("dm",) if args.tiny else ("dm", "mtt"):
            r = {v: attempt("method", cfg={**cfg, "method": m}, iters=2 if args.tiny else 10, variant=v, threads=1)
                 for v in ("plain", "bf16")}
            rows.append(precision_row(report, f"{m} iteration", size, width, r, "it_per_s"))
        ev = dict(ipc=10, epochs=3 if args.tiny else 60, models=1, width=width, depth=depth, threads=1, stages=1,
                  batched=False, dataset=ds["dataset"], max_train=ds.get("max_train"))
        r = {v: attempt("eval", variant=v, **ev) for v in ("plain", "bf16")}
        rows.append(precision_row(report, "evaluation training", size, width, r, "train_images_per_s"))
    return table("float32 against bf16 at one torch thread (IPC 10; MNIST: a 2,000-image pool)",
                 ["what", "px", "width", "float32 /s", "bf16 /s", "bf16 speed-up"], rows)


def precision_row(report: dict, what: str, size: int, width: int, r: dict, rate: str) -> list:
    """One row of the precision section (and its report entry): both variants' rates and their ratio."""
    key = f"precision {what} {size}px w{width}"
    if any("failed" in v for v in r.values()):
        report[key] = r
        return [what, size, width] + cells(next(v for v in r.values() if "failed" in v), None)
    report[key] = {"float32": r["plain"][rate], "bf16": r["bf16"][rate], "speedup": r["bf16"][rate] / r["plain"][rate]}
    return [what, size, width, f"{r['plain'][rate]:.1f}", f"{r['bf16'][rate]:.1f}", f"{report[key]['speedup']:.2f}x"]


def section_executor(args, report: dict) -> str:
    """Local against Ray (1 and 2 workers) on one stage's units; the same trajectories and accuracies."""
    kw = dict(experts=2 if args.tiny else 8, epochs=1 if args.tiny else 3, pings=5 if args.tiny else 50,
              eval_epochs=5 if args.tiny else 300)
    rows = []
    for name, workers in (("local", 1), ("ray", 1), ("ray", 2)):
        r = attempt("executor", executor=name, workers=workers, **kw)
        report[f"executor_{name}_{workers}"] = r
        rows.append([name, workers] + cells(r, lambda r: [
            f"{r['experts_s']:.1f}", f"{r['eval_s']:.1f}", f"{r['per_task_ms']:.1f}", f"{r['checksum']:.6g}",
            f"{100 * sum(r['eval_acc']) / len(r['eval_acc']):.2f}"], width=5))
    return table(f"Executors: one stage's units on digits — MTT's experts ({kw['experts']} experts x {kw['epochs']} "
                 f"epochs; the second of two calls timed), a 5-network evaluation on IPC 10 ({kw['eval_epochs']} epochs, "
                 f"one network per unit), 1 torch thread per unit — and the cost of a task that does nothing",
                 ["executor", "workers", "experts s", "evaluation s", "ms per task", "trajectory checksum",
                  "mean accuracy %"], rows)


# The reference implementations' configuration (issue 10): MNIST, IPC 10, ConvNet-3 width 128, instance
# norm, the full DSA strategy, real initialisation; DM with batch_real 256, MTT with batch_syn 100.
REFERENCE_CFG = dict(dataset="mnist", stages=1, ipc=10, width=128, depth=3, norm="instance", init="real",
                     dsa_strategy="color_crop_cutout_flip_scale_rotate")
TINY_CFG = {"dataset": "digits", "width": 16, "depth": 2}  # --tiny: the same rows at toy sizes
# MTT's experts train on a 2,000-image subset: an MTT iteration's cost does not depend on the real set
REFERENCE_MTT = dict(method="mtt", max_train=2000, num_experts=1, max_start_epoch=1, expert_epochs=1, batch_syn=100)


REFERENCE_DM = dict(method="dm", batch_real=256)


def reference_cfg(tiny: bool) -> dict:
    return dict(REFERENCE_CFG, **(TINY_CFG if tiny else {}))


def reference_eval(base: dict, tiny: bool) -> dict:
    """The evaluation child's arguments at the reference configuration: 5 networks x 20 epochs on IPC 10."""
    return dict(dataset=base["dataset"], depth=base["depth"], width=base["width"], ipc=base["ipc"], models=5,
                threads=2, epochs=2 if tiny else 20)


def unchunk() -> None:
    """The engine before cache-sized chunks: ConvNets built after this run whole batches."""
    import pdd_engine.models
    pdd_engine.models.CHUNK_BYTES = None


def load_reference(path) -> dict:
    """Figures measured by running the reference code on this machine (``--reference FILE``: a JSON
    object of row name -> seconds, and a ``how`` line); empty without one."""
    return json.loads(Path(path).read_text()) if path else {}


def section_reference(args, report: dict, dm_only: bool = False) -> str:
    """The reference code's configurations as named rows: the engine now, the engine without cache-sized
    chunks (models.CHUNK_BYTES: the engine before), and the reference's figure with the ratio where given.
    ``dm_only`` (section reference_dm): DM's iteration alone, float32 and bf16, in minutes rather than the
    whole section's quarter of an hour: the figure issue 30's DM target is stated in."""
    tiny = args.tiny
    base = reference_cfg(tiny)
    ref = load_reference(args.reference)
    mtt = dict(base, **REFERENCE_MTT)
    rows = []

    def add(name: str, unit: str, value, extra: str = "") -> None:
        r = ref.get(name)
        ratio = f"{value / r:.2f}" if isinstance(value, float) and r else "–"
        rows.append([name, unit, f"{value:.2f}" if isinstance(value, float) else value, f"{r:.2f}" if r else "–",
                     ratio, extra])

    # the per-iteration rows: (name, report key, config, timed iterations)
    iteration_rows = [("DM iteration", "dm", dict(base, **REFERENCE_DM), 5)] + [
        (f"MTT iteration, syn_steps {steps}", f"mtt{steps}", dict(mtt, syn_steps=steps), 2)
        for steps in ((2,) if tiny else (10, 20)) if not dm_only]

    def iterations(tag: str, key_tag: str, note: str, precision: str = "float32", unchunked: bool = False) -> None:
        for name, key, cfg, iters in iteration_rows:
            r = attempt("method", cfg=dict(cfg, precision=precision), iters=1 if tiny else iters, unchunked=unchunked)
            report[f"reference_{key}{key_tag}"] = r
            add(f"{name}{tag}", "s/iter", 1 / r["it_per_s"] if "it_per_s" in r else r.get("failed", "failed"),
                f"peak RSS {r.get('process_peak_mb', 0):.0f} MB{note}")

    title = ("Reference configurations (MNIST, IPC 10, ConvNet-3 width 128, instance norm, full DSA, real init; "
             "DM batch_real 256; MTT batch_syn 100; evaluation: 5 networks x 20 epochs on 100 images)")
    if dm_only:
        iterations("", "", "")
        iterations(", precision bfloat16", " (bfloat16)", "; the reference runs float32", precision="bfloat16")
        return table(title, ["row", "unit", "engine", "reference", "engine / reference", "notes"], rows)
    for unchunked in (False, True):
        tag = " (unchunked)" if unchunked else ""
        iterations(tag, tag, "", unchunked=unchunked)
        r = attempt("expert", cfg=dict(base, method="mtt"), steps=2 if tiny else 10, unchunked=unchunked)
        report[f"reference_expert{tag}"] = r
        add(f"expert epoch{tag}", "s/epoch", r["epoch_s"] if "epoch_s" in r else r.get("failed", "failed"),
            f"{r.get('step_s', 0):.2f} s per step of 256 images, {r.get('train', 0)} images")
    # precision=bfloat16: the same rows with the matching under bf16 autocast (faster where the CPU has bf16)
    iterations(", precision bfloat16", " (bfloat16)", "; the reference runs float32", precision="bfloat16")
    ev = reference_eval(base, tiny)
    plain = None
    for name, kw in (("evaluation, plain PyTorch loop", {"plain": True, "batched": False}),
                     ("evaluation, engine sequential", {"batched": False}),
                     ("evaluation, engine sequential, eval_precision bfloat16", {"batched": False, "variant": "bf16"}),
                     ("evaluation, engine batched (vmap)", {"batched": True}),
                     ("evaluation, engine batched (unchunked)", {"batched": True, "unchunked": True})):
        r = attempt("eval", **ev, **kw)
        report[f"reference_{name}"] = r
        speed = r.get("train_images_per_s")
        plain = plain or speed
        if speed and plain:
            r["speed_up_over_plain"] = speed / plain
        add(name, "training images/s", speed if speed else r.get("failed", "failed"),
            f"{r.get('speed_up_over_plain', 0):.2f} x the plain loop; test pass (5 x 10,000 images) "
            f"{r.get('test_s', 0):.0f} s; acc {100 * r.get('acc', 0):.1f} %")
    run_cfg = dict(base, **REFERENCE_DM, iterations=2 if tiny else 20, eval_epochs=2 if tiny else 20,
                   eval_models=3)
    r = attempt("run", cfg=run_cfg)
    report["reference_whole_run"] = r
    add("whole run, DM P = 1 (peak RSS)", "MB", r["peak_mb"] if "peak_mb" in r else r.get("failed", "failed"),
        f"{r.get('seconds', 0):.0f} s for {run_cfg['iterations']} iterations, 3 x {run_cfg['eval_epochs']} eval epochs, "
        "random subset and base")
    r = attempt("run", cfg={} if not tiny else {"iterations": 2, "eval_epochs": 2})
    report["default_run"] = r
    add("default run (digits, app and CLI defaults)", "s", r["seconds"] if "seconds" in r else r.get("failed", "failed"),
        f"PDD {100 * (r.get('acc') or 0):.1f} %, base {100 * (r.get('base') or 0):.1f} %, "
        f"random {100 * (r.get('random') or 0):.1f} %; peak RSS {r.get('peak_mb', 0):.0f} MB")
    note = f"\n{ref['how']}\n" if ref.get("how") else ""
    return table(title, ["row", "unit", "engine", "reference", "engine / reference", "notes"], rows) + note


def section_chunks(args, report: dict) -> str:
    """The reference rows at several cache-sized chunk sizes (models.CHUNK_BYTES, the first block's
    activation per pass, sized in the arithmetic the convolutions run in), in float32 and bf16: the
    measurement CHUNK_BYTES was chosen by. Experts train in float32 whatever the precision."""
    tiny = args.tiny
    base = reference_cfg(tiny)
    ev = dict(reference_eval(base, tiny), batched=False)
    rows = []
    for mb in (8, 16) if tiny else (4, 8, 16, 32):
        for prec in ("float32", "bfloat16"):
            dm = attempt("method", cfg=dict(base, **REFERENCE_DM, precision=prec),
                         iters=1 if tiny else 5, chunk_mb=mb)
            mtt = attempt("method", cfg=dict(base, **REFERENCE_MTT, syn_steps=2 if tiny else 10, precision=prec),
                          iters=1 if tiny else 2, chunk_mb=mb)
            ex = attempt("expert", cfg=dict(base, method="mtt"), steps=2 if tiny else 10, chunk_mb=mb) \
                if prec == "float32" else {}
            ev_r = attempt("eval", **ev, variant="bf16" if prec == "bfloat16" else "plain", chunk_mb=mb)
            report[f"chunks_{mb}_{prec}"] = {"dm": dm, "mtt10": mtt, "expert": ex, "eval": ev_r}
            rows.append([mb, prec] + [f"{1 / r['it_per_s']:.2f}" if "it_per_s" in r else r.get("failed", "failed")
                                      for r in (dm, mtt)]
                        + [f"{ex['step_s']:.3f}" if "step_s" in ex else ex.get("failed", "– (float32)"),
                           f"{ev_r['train_images_per_s']:.0f}" if "train_images_per_s" in ev_r
                           else ev_r.get("failed", "failed")])
    title = ("Chunk sizes on the reference configurations (MNIST, width 128; DM batch_real 256, MTT syn_steps 10, "
             "expert step of 256 images, evaluation 5 networks x 20 epochs on 100 images, sequential)")
    return table(title, ["chunk MiB", "precision", "DM s/iter", "MTT s/iter", "expert s/step",
                         "evaluation training images/s"], rows)


def section_ceiling(args, report: dict) -> str:
    """The floor the machine's arithmetic puts under the DM and evaluation targets: each convolution of
    the reference network at the best rate this machine ran it (``m_peak``), nothing else taking time,
    beside the target (DM: 0.5 x the reference's seconds per iteration; evaluation: 2 x the plain loop's
    training images/s, measured in this run). Where the floor misses a target, no implementation that
    does the network's arithmetic as these kernels do can meet it here."""
    tiny = args.tiny
    base = reference_cfg(tiny)
    size, classes = (28 if base["dataset"] == "mnist" else 8), 10  # MNIST, or --tiny's digits
    ref_dm = load_reference(args.reference).get("DM iteration")
    peak = attempt("peak", size=size, depth=base["depth"], width=base["width"], threads=2,
                   batches=[16] if tiny else [16, 32, 64], reps=2 if tiny else 10)
    report["ceiling_peak"] = peak
    if "failed" in peak:
        return f"**Arithmetic ceiling**: failed: {peak['failed']}\n"
    ev = reference_eval(base, tiny)
    plain = attempt("eval", **ev, plain=True, batched=False).get("train_images_per_s")
    report["ceiling_plain_eval"] = plain
    rows = []
    for prec in ("float32", "bfloat16"):
        p = peak[prec]
        floor = p["floor_s_per_image"]
        # a DM iteration: batch_real real images per class forward, the IPC synthetic ones forward and backward
        dm = classes * (REFERENCE_DM["batch_real"] * floor["forward"] + base["ipc"] * floor["train_input_grad"])
        rates = ", ".join(f"{layer['forward']:.0f}/{layer['backward' if i else 'backward_weights']:.0f}"
                          for i, layer in enumerate(p["layers"]))  # as a training step runs each
        rows.append([prec, rates, f"{p['matmul_gflops']:.0f}", f"{dm:.2f}", f"{0.5 * ref_dm:.2f}" if ref_dm else "–",
                     f"{1 / floor['train']:.0f}", f"{2 * plain:.0f}" if plain else "–"])
    mflop = " + ".join(f"{layer['mflop']:.1f}" for layer in peak["float32"]["layers"])
    title = (f"Arithmetic ceiling ({base['dataset']}, depth {base['depth']}, width {base['width']}; convolutions "
             f"{mflop} MFLOP per image forward; a DM iteration = 2,560 real images forward + 100 synthetic forward "
             f"and backward; the plain evaluation loop in this run: {plain or 0:.0f} training images/s)")
    return table(title, ["arithmetic", "each convolution's best GFLOP/s (forward/backward as in training)", "matmul 2048 GFLOP/s",
                         "DM floor s/iter", "DM target s/iter", "evaluation ceiling training images/s",
                         "evaluation target images/s"], rows)


SECTIONS = {"methods": section_methods, "eval": section_eval, "eval_widths": section_eval_widths, "experts": section_experts,
            "transition": section_transition, "presets": section_presets, "arithmetic": section_arithmetic, "mtt_mnist": section_mtt_mnist, "openmp": section_openmp, "lanes": section_lanes,
            "unroll": section_unroll, "variants": section_variants, "precision": section_precision, "executor": section_executor,
            "reference": section_reference, "reference_dm": functools.partial(section_reference, dm_only=True),
            "chunks": section_chunks, "ceiling": section_ceiling}


if __name__ == "__main__":
    sys.exit(main())
