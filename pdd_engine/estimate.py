"""Before-you-run estimates of time and memory on this machine.

Time: the config's network is timed once (forward + backward per sample, on this device), then
multiplied by the number of sample-passes each method, transition and evaluation makes. It is a
rough guide (counted work x measured speed, typically within 2x), not a promise.
Memory: the dataset, the synthetic union and, for MTT, the unrolled trajectory estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import models
from .config import DistillConfig
from .device import arithmetic, resolved
from .registry import find, get_method

RUNTIME_BYTES = 800 * 2 ** 20  # resident size of Python + torch before any data (measured: ~800 MB)
STARTUP_S = 6.0  # engine process start, imports and data loading, measured on the 2-core machines


@dataclass
class Estimate:
    seconds: float
    peak_bytes: int
    step_seconds: float  # fixed cost of one forward + backward call (float32)
    sample_seconds: float  # added cost per sample in it (float32)

    def __str__(self) -> str:
        return f"about {human_time(self.seconds)} and {self.peak_bytes / 2 ** 30:.2f} GiB peak"


def human_time(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


@lru_cache(maxsize=32)
def pass_cost(channels: int, size: int, classes: int, depth: int, width: int, norm: str, device: str,
              precision: str = "float32") -> tuple[float, float]:
    """Measured (seconds per call, seconds per sample) of forward + backward through the ConvNet, in the
    arithmetic of a ``precision`` setting (bf16 is faster or, where emulated, several times slower)."""
    net = models.build_model(channels, classes, size, depth, width, norm).to(device)

    def step(x, y) -> None:
        with arithmetic(precision, torch.device(device)):
            F.cross_entropy(net(x), y).backward()

    def timed(batch: int) -> float:
        x = torch.randn(batch, channels, size, size, device=device)
        y = torch.randint(classes, (batch,), device=device)
        step(x, y)  # warm-up
        t = time.perf_counter()
        for _ in range(5):
            step(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / 5

    small, large = timed(2), timed(66)
    per_sample = max((large - small) / 64, 1e-9)
    return max(small - 2 * per_sample, 1e-6), per_sample


def config_warnings(cfg: DistillConfig, n_train: Optional[int] = None) -> list[str]:
    """Settings that are valid but will likely hurt quality, found before a run starts (the engine
    repeats them once it knows the real data size). ``n_train``: real training images, if known."""
    out = learning_rate_warnings(cfg)
    n = n_train or (find(cfg.dataset).shape or (0, 0, 0, None))[3]
    if n is None:
        return out
    return out + get_method(cfg.method).warnings(cfg, min(n, cfg.max_train or n))


LR_FACTOR = 1000  # farther than this from the default, a learning rate is almost surely a typo


def learning_rate_warnings(cfg: DistillConfig) -> list[str]:
    """Every learning rate (shared: lr_img, eval_lr; the method's: each ``*lr*`` setting) more than
    :data:`LR_FACTOR` times above or below its default: valid, but a run that diverges or never moves."""
    method = get_method(cfg.method)
    rates = [("lr_img", cfg.effective_lr_img, method.lr_img), ("eval_lr", cfg.eval_lr, DistillConfig.eval_lr)]
    rates += [(f.name, getattr(cfg.params, f.name), f.default) for f in fields(cfg.params)
              if "lr" in f.name.split("_") and isinstance(f.default, float)]
    out = []
    for name, value, default in rates:
        ratio = value / default
        if ratio > LR_FACTOR or ratio < 1 / LR_FACTOR:
            out.append(f"warning: {name} {value:g} is {ratio if ratio > 1 else 1 / ratio:,.0f} times "
                       f"{'above' if ratio > 1 else 'below'} its default {default:g} for {cfg.method}; the run will "
                       f"likely {'diverge' if ratio > 1 else 'barely change anything'}. Fix: set {name} nearer "
                       f"{default:g} (or leave it unset)")
    return out


def data_shape(cfg: DistillConfig, shape: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """(channels, size, classes, real training images) of the config's data, before loading it."""
    ch, size, classes, n_train = shape or find(cfg.dataset).shape or (3, cfg.image_size or 32, 10, 10000)
    return ch, cfg.image_size or size, classes, min(n_train, cfg.max_train or n_train)


def cost_key(cfg: DistillConfig, device: str = "cpu", shape: tuple[int, int, int, int] | None = None,
             precision: str = "float32") -> tuple:
    """The arguments of :func:`pass_cost` for this config's network in ``precision``: what its timing
    depends on."""
    ch, size, classes, _ = data_shape(cfg, shape)
    return ch, size, classes, cfg.depth_for(size), cfg.width, cfg.norm, device, precision


CostFn = Callable[[int, int, int, int, int, str, str, str], tuple[float, float]]
# (cfg, channels, size, classes, union, real images, device) -> the method's extra peak bytes
MemoryFn = Callable[[DistillConfig, int, int, int, int, int, str], int]


def extra_memory(cfg: DistillConfig, channels: int, size: int, classes: int, union: int, n_train: int,
                 device: str) -> int:
    """The method's peak bytes beyond data and union (MTT sizes its unroll with a network: torch)."""
    return get_method(cfg.method).extra_memory(cfg, channels, size, classes, union, n_train, device)


def estimate(cfg: DistillConfig, shape: tuple[int, int, int, int] | None = None, device: str = "cpu",
             cost: Optional[CostFn] = None, memory: Optional[MemoryFn] = None) -> Estimate:
    """Counted calls and samples of every phase, times this machine's measured cost of each.

    ``cost`` and ``memory``: where :func:`pass_cost` and :func:`extra_memory` run (default: here). A
    web server passes ones that run in a helper process: away from its request threads, whose load
    would skew the timing, and without importing torch."""
    cfg = resolved(cfg)  # auto arithmetic priced as it will run here
    ch, size, classes, n_train = data_shape(cfg, shape)
    # counted (calls, samples) by arithmetic: the matching runs in cfg.precision, the evaluation in
    # cfg.eval_precision, transitions and experts in float32
    work = {p: [0.0, 0.0] for p in ("float32", cfg.precision, cfg.eval_precision)}

    def train(n: float, epochs: float, batch: int, precision: str = "float32") -> None:
        if n:
            work[precision][0] += epochs * math.ceil(n / batch)
        work[precision][1] += epochs * n

    method = get_method(cfg.method)
    mult = method.images_per_stored(cfg, size)

    def transition(sizes: list[float]) -> None:
        """One network brought to a stage's start: every prefix union (chain) or the last one (fresh)."""
        for n in (sizes if cfg.transition == "chain" else sizes[-1:]):
            train(n, cfg.transition_epochs, cfg.eval_batch)

    def distil(union: float, prefixes: list[float]) -> None:
        at = cfg.replace(iterations=cfg.iterations_at(len(prefixes) + 1))  # a later stage's own iterations
        w = method.cost(at, classes, union, n_train, bool(prefixes))
        work[cfg.precision][0] += w.calls
        work[cfg.precision][1] += w.samples
        for _ in range(w.transitions):
            transition(prefixes)
        for n, epochs, batch in w.training:
            train(n, epochs, batch)

    for i in range(1, cfg.stages + 1):
        union = classes * cfg.cum_ipc(i) * mult
        distil(union, [classes * cfg.cum_ipc(j) * mult for j in range(1, i)])
        for _ in range(2 * cfg.eval_models):  # distilled and random-subset curricula
            train(union, cfg.eval_epochs, cfg.eval_batch, cfg.eval_precision)
        if i in cfg.base_stages() and i > 1:  # the base method alone at this IPC (stage 1 is PDD's own)
            distil(union, [])
            epochs = cfg.eval_epochs * (i if cfg.compare_epochs else 1)  # and as long as PDD's curriculum
            for _ in range(cfg.eval_models):
                train(union, epochs, cfg.eval_batch, cfg.eval_precision)
    union_last = classes * cfg.ipc * mult
    data_bytes = 4 * ch * size * size * (n_train + union_last) * 2
    mem = data_bytes + RUNTIME_BYTES
    mem += (memory or extra_memory)(cfg, ch, size, classes, union_last, n_train, device)
    costs = {p: (cost or pass_cost)(*cost_key(cfg, device, shape, p)) for p in work}
    seconds = sum(calls * costs[p][0] + samples * costs[p][1] for p, (calls, samples) in work.items())
    per_call, per_sample = costs["float32"]
    return Estimate(STARTUP_S + seconds, int(mem), per_call, per_sample)
