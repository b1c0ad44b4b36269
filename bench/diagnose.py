"""Per-stage diagnostics of one PDD run: why does (or doesn't) each stage add something?

For every stage i of a config it prints and records:
- **acc / gain**: curriculum accuracy after U_i and its gain over U_{i-1} (and the same for the
  random curriculum), from the run itself;
- **start acc**: test accuracy of the network stage i's matching starts from (theta_{i-1}: the
  transition network, the start of its experts for MTT), so one can see whether later stages really
  see a later phase of training;
- **NN dist**: mean distance of each new image to its nearest real image of its class, relative
  to the mean nearest-neighbour distance between real images of that class (1.0 = as close as a
  typical real neighbour; far above 1 = off the data manifold);
- **spread**: mean pairwise distance among the new images of a class relative to real images'
  (low = the stage's images collapse onto one prototype);
- **start images** (``--start-images``): curriculum accuracy after U_{i-1} plus stage i's images as the
  base method *initialised* them, before any update (trained with the stage's own step size): whether the
  matching moved the images somewhere better than where they started. A copy of the curriculum trained on
  the run's unions takes that step, so it costs 2P - 1 curriculum steps; off unless asked for.

    .venv/bin/python bench/diagnose.py --method dm --stages 5 --ipc 10
    .venv/bin/python bench/diagnose.py --method mtt --stages 5 --ipc 10 --transition fresh
    .venv/bin/python bench/diagnose.py --dataset mnist --max-train 10000 --method idc --ipc 50 --stages 1 --start-images

Writes diagnose_<dataset>_<method>_P<stages>.json and .md here (or --out) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from pdd_engine import DistillConfig, distill  # noqa: E402
from pdd_engine.__main__ import add_config_flags  # noqa: E402
from pdd_engine.cache import Store  # noqa: E402
from pdd_engine.keys import Keys
from bench.common import write_report
from pdd_engine.data import dataset_for  # noqa: E402
from pdd_engine.device import resolve_device, resolved  # noqa: E402
from pdd_engine.evaluate import Curriculum, EvalProtocol, make_curriculum  # noqa: E402
from pdd_engine.progressive import Union, stage_context  # noqa: E402
from pdd_engine.registry import get_method  # noqa: E402
from pdd_engine.training import accuracy, seed_of  # noqa: E402


def nn_ratio(new: torch.Tensor, real: torch.Tensor) -> float:
    """Mean distance from each new image to its nearest real image, over real images' own NN distance."""
    d_new = torch.cdist(new.flatten(1), real.flatten(1)).min(1).values.mean()
    rr = torch.cdist(real.flatten(1), real.flatten(1))
    rr.fill_diagonal_(float("inf"))
    return float(d_new / rr.min(1).values.mean())


def spread_ratio(new: torch.Tensor, real: torch.Tensor) -> float:
    if len(new) < 2:
        return float("nan")
    pair = lambda x: torch.pdist(x.flatten(1)).mean()  # noqa: E731
    return float(pair(new) / pair(real[:200]))


def start_images_accuracy(cur: Curriculum, cfg: DistillConfig, union: Union, ctx, lr) -> float:
    """Mean accuracy of a copy of ``cur`` (the run's curriculum after U_{i-1}, ``union``) trained one step more
    on U_{i-1} plus stage i's images as its method initialises them (``ctx``: stage i's context), at ``lr``."""
    method = get_method(cfg.method)(ctx)
    x0, y0 = method.decode(method.init_images())
    fork = make_curriculum(cur.ds, cur.proto, cur.device, cfg.eval_batched).load(cur.state())
    accs = fork.train_stage(torch.cat([union.x, x0.to(union.x.device)]), torch.cat([union.y, y0.to(union.y.device)]), lr)
    return sum(accs) / len(accs)


def diagnose(cfg: DistillConfig, start_images: bool = False) -> list[dict]:
    """Run ``cfg`` (a fresh cache) and return one row of diagnostics per stage (the module's docstring)."""
    cfg = cfg.replace(compare_base="off")
    store = Store(tempfile.mkdtemp())
    done = distill(cfg, store)
    ds = dataset_for(cfg)
    keys = Keys.of(cfg, ds)
    union = Union.empty(ds, torch.device("cpu"))
    # the run's curriculum, trained union by union: each stage's start images take one step from a copy of it
    cur = make_curriculum(ds, EvalProtocol.from_config(resolved(cfg), ds.size), resolve_device(cfg.device),
                          cfg.eval_batched) if start_images else None
    rows = []
    for i in range(1, cfg.stages + 1):
        ctx = stage_context(cfg, ds, i, union=union)
        starts = [accuracy(ctx.transition(ctx.new_model(seed_of(k, 77)), seed_of(k, 78)), ds.x_test, ds.y_test)
                  for k in range(3)] if i > 1 else []
        tensors, meta = store.get(keys.stage(i))
        x, y = tensors["train_x"], tensors["train_y"]
        nn, spread = [], []
        for c in range(ds.num_classes):
            real = ds.x_train[ds.y_train == c]
            nn.append(nn_ratio(x[y == c], real))
            spread.append(spread_ratio(x[y == c], real))
        a, prev = done.accuracies[i - 1], done.accuracies[i - 2] if i > 1 else None
        rows.append({"stage": i, "acc": a["mean"], "gain": a["mean"] - (prev["mean"] if prev else 0.0),
                     "random": a["random_mean"], "random_gain": a["random_mean"] - (prev["random_mean"] if prev else 0.0),
                     "start_acc": sum(starts) / len(starts) if starts else None, "nn_ratio": sum(nn) / len(nn),
                     "spread_ratio": sum(spread) / len(spread), "lr": meta["lr"],
                     "start_images_acc": start_images_accuracy(cur, cfg, union, ctx, meta["lr"]) if cur else None})
        union.add(tensors, meta["lr"])
        if cur is not None and i < cfg.stages:
            cur.fit(union.x, union.y, meta["lr"])
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (the start-images column where it was measured)."""
    images = any(r["start_images_acc"] is not None for r in rows)
    out = ["| stage | acc % | gain | random % | random gain | start acc % | NN dist | spread | lr |"
           + (" start images % | moved by |" if images else ""),
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if images else "")]
    for r in rows:
        start = "–" if r["start_acc"] is None else f"{100 * r['start_acc']:.1f}"
        lr = "–" if r["lr"] is None else f"{r['lr']:.4f}"
        line = (f"| {r['stage']} | {100 * r['acc']:.1f} | {100 * r['gain']:+.1f} | {100 * r['random']:.1f} | "
                f"{100 * r['random_gain']:+.1f} | {start} | {r['nn_ratio']:.2f} | {r['spread_ratio']:.2f} | {lr} |")
        if images:
            line += f" {100 * r['start_images_acc']:.1f} | {100 * (r['acc'] - r['start_images_acc']):+.1f} |"
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(ap)
    ap.add_argument("--out", default=None)
    ap.add_argument("--start-images", action="store_true",
                    help="also evaluate each stage's images as initialised, before any update (2P - 1 curriculum steps)")
    args = ap.parse_args()
    cfg = DistillConfig.make({k: v for k, v in vars(args).items() if k not in ("out", "start_images") and v is not None})
    rows = diagnose(cfg, args.start_images)
    md = table(rows)
    write_report(args.out or f"diagnose_{cfg.dataset}_{cfg.method}_P{cfg.stages}",
                 {"config": cfg.to_dict(), "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
