"""The one interface every base method implements, and the stage context PDD hands it.

PDD owns the synthetic tensor S_i, its optimiser and the iteration loop; a method only says how
to initialise S_i, what loss to minimise on the union U_i = frozen ∪ S_i, and which extra
parameters (MTT's step size) it learns. That is all PDD needs to wrap any method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn as nn

from .. import models
from ..augment import DSA
from ..data import Dataset
from ..executor import Executor, gpus_for, or_local, unit_device
from ..registry import MethodSpec
from ..training import make_sgd, seed_of, train_epochs, train_together, trains_together

if TYPE_CHECKING:
    from ..config import DistillConfig


# memo(name, compute, check) -> tensors: the cached value of the method's artefact ``name`` at this
# stage, or compute() stored under a key derived from the fields the method declares in ``memos[name]``
# (pdd_engine.keys); ``check(tensors)`` returns why a cached value is unusable, or None.
Memo = Callable[[str, Callable[[], dict], Optional[Callable[[dict], Optional[str]]]], dict]


@dataclass
class StageContext:
    """Everything a method may look at while distilling stage ``stage`` (1-based)."""

    cfg: "DistillConfig"
    ds: Dataset
    stage: int
    device: torch.device
    frozen_x: torch.Tensor  # training-form images of U_{i-1}, on device, never updated
    frozen_y: torch.Tensor
    stage_lrs: list[float]  # lr a network uses on each earlier stage's union U_1..U_{i-1}
    stage_sizes: list[int]  # training-form images each earlier stage added: U_j = frozen[:sum(sizes[:j])]
    real_by_class: list[torch.Tensor]  # indices into ds.x_train each class may match against
    memo: Optional[Memo] = None  # caches a method's own artefacts (MTT experts) under derived keys
    report: Callable[[str], None] = field(default=lambda msg: None)
    cancel: Optional[Callable[[], None]] = None  # raises Cancelled when the run is stopped
    executor: Optional[Executor] = None  # runs the stage's independent units (None: in this process)

    @property
    def units(self) -> Executor:
        return or_local(self.executor)

    @property
    def seed(self) -> int:
        return seed_of(self.cfg.seed, self.stage)

    @property
    def aug(self) -> DSA:
        return DSA(self.cfg.dsa_ops)

    def new_model(self, seed: int) -> nn.Module:
        c = self.cfg
        return models.build_model(self.ds.channels, self.ds.num_classes, self.ds.size, c.depth_for(self.ds.size), c.width,
                                  c.norm, seed=seed).to(self.device)

    @property
    def transition_lr(self) -> float:
        """The lr for the last frozen union (the previous stage's learned lr, if any)."""
        return self.stage_lrs[-1] if self.stage_lrs else self.cfg.eval_lr

    def transition(self, net: nn.Module, seed: int) -> nn.Module:
        """Bring ``net`` to where stage i's matching starts (PDD.md).

        ``chain`` (the official code): train on U_1, then U_2, ... U_{i-1}, ``transition_epochs`` each,
        a fresh SGD per stage at that stage's lr, so the network is theta_{i-1} of one carried chain.
        ``fresh``: train on U_{i-1} alone.
        """
        for j, (end, lr) in enumerate(self.transition_plan()):
            train_epochs(net, self.frozen_x[:end], self.frozen_y[:end], self.cfg.transition_epochs,
                         make_sgd(net, lr), lr, self.cfg.eval_batch, self.aug, seed_of(seed, j))
        return net

    def transition_plan(self) -> list[tuple[int, float]]:
        """(images of the frozen union trained on, lr) per transition step; empty at stage 1."""
        if not len(self.frozen_x):
            return []
        ends = torch.tensor(self.stage_sizes).cumsum(0).tolist()
        return list(zip(ends, self.stage_lrs)) if self.cfg.transition == "chain" else [(ends[-1], self.transition_lr)]

    def transitioned(self, seeds: list[int], together: Optional[bool] = None) -> list[nn.Module]:
        """``new_model(s)`` brought through :meth:`transition`, for each seed. Many small networks
        (DM's pool, MTT's experts) train together (vmap) where :func:`trains_together` says that is
        faster (``together`` overrides it): each keeps its own seed's minibatches and augmentation,
        so the networks are the one-by-one networks up to floating-point summation order."""
        plan = self.transition_plan()
        c = self.cfg
        if together is None:
            together = trains_together(None, c.norm, len(seeds), self.device)
        if plan and not together and len(seeds) > 1:  # independent units: the run's executor may spread them
            states = self.units.map(transition_unit, seeds, self.unit_shared(), self.cancel, gpus=gpus_for(self.device))
            nets = [self.new_model(s) for s in seeds]
            for net, state in zip(nets, states):
                net.load_state_dict(state)
            return nets
        nets = [self.new_model(s) for s in seeds]
        if not plan or len(nets) < 2:
            for net, s in zip(nets, seeds):
                self.check_cancel()
                self.transition(net, s)
            return nets
        params, buffers = torch.func.stack_module_state(nets)
        base = copy.deepcopy(nets[0]).to("meta")
        for j, (end, lr) in enumerate(plan):  # a fresh SGD per step, as make_sgd gives each network
            opt = make_sgd(params.values(), lr)
            train_together(base, params, buffers, self.frozen_x[:end], self.frozen_y[:end], c.transition_epochs,
                           opt, lr, c.eval_batch, self.aug, [seed_of(s, j) for s in seeds])
        for k, net in enumerate(nets):
            net.load_state_dict({name: t[k].detach() for name, t in {**params, **buffers}.items()})
        return nets

    def unit_shared(self) -> dict:
        """What an independent unit of this stage needs to rebuild the context (:func:`unit_context`): the whole
        training set (the same tensors every stage: an executor ships them once per run), which of its images
        this stage matches against (in class order), and the frozen union a later stage's networks first
        train on."""
        return {"cfg": self.cfg, "stage": self.stage, "device": str(self.device),
                "shape": (self.ds.channels, self.ds.num_classes, self.ds.size),
                "x": self.ds.x_train, "y": self.ds.y_train, "idx": torch.cat(self.real_by_class),
                "frozen_x": self.frozen_x.cpu(), "frozen_y": self.frozen_y.cpu(),
                "lrs": list(self.stage_lrs), "sizes": list(self.stage_sizes)}

    def real_batch(self, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        idx = self.real_by_class[c]
        pick = idx[torch.randperm(len(idx), generator=g)[:n]]
        return self.ds.x_train[pick].to(self.device)

    def check_cancel(self) -> None:
        if self.cancel:
            self.cancel()

    def cached(self, name: str, compute: Callable[[], dict], check=None) -> dict:
        """``compute()``, or its stored value from an earlier run with the same inputs."""
        return self.memo(name, compute, check) if self.memo is not None else compute()


def unit_context(shared: dict) -> StageContext:
    """The stage context a unit rebuilds from :meth:`StageContext.unit_shared`, on the unit's device, without
    the run's memo, reports or executor (a unit is a pure function of its inputs)."""
    from types import SimpleNamespace
    device = unit_device(shared["device"])
    channels, classes, size = shared["shape"]
    ds = SimpleNamespace(channels=channels, num_classes=classes, size=size)
    return StageContext(shared["cfg"], ds, shared["stage"], device, shared["frozen_x"].to(device),
                        shared["frozen_y"].to(device), shared["lrs"], shared["sizes"], [])


def transition_unit(shared: dict, seed: int) -> dict[str, torch.Tensor]:
    """One network of :meth:`StageContext.transitioned` (DM's pool): ``new_model(seed)`` brought through the
    transition, as its state on the CPU; the same network whichever executor and thread runs it."""
    ctx = unit_context(shared)
    net = ctx.transition(ctx.new_model(seed), seed)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


class Method(MethodSpec):
    """Base class: one file per method subclasses it, sets the spec (:class:`MethodSpec`: name, title,
    image lr, ``Params``, memos, cost, manifest), implements :meth:`loss` and registers with
    ``@register``. Config validation, CLI, studio, cache keys, estimate and export read the spec."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.ipc = ctx.cfg.ipc_at(ctx.stage)  # images per class this stage adds
        self.g = torch.Generator().manual_seed(ctx.seed)

    # -- what the stored synthetic tensor is ---------------------------------------------
    def init_images(self) -> torch.Tensor:
        """Stored images of S_i, class-major (ipc of class 0, then class 1, ...)."""
        ctx, c = self.ctx, self.ctx.cfg
        if c.init == "noise":
            return torch.randn(ctx.ds.num_classes * self.ipc, ctx.ds.channels, ctx.ds.size, ctx.ds.size,
                               generator=self.g).to(ctx.device)
        return torch.cat([ctx.real_batch(k, self.ipc, self.g) for k in range(ctx.ds.num_classes)])

    def labels(self) -> torch.Tensor:
        return torch.arange(self.ctx.ds.num_classes, device=self.ctx.device).repeat_interleave(self.ipc)

    def decode(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images and labels that ``stored`` stands for (identity except for IDC)."""
        return stored, self.labels()

    def union(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U_i in training form: frozen images (detached) then this stage's decoded images."""
        x, y = self.decode(stored)
        return torch.cat([self.ctx.frozen_x.detach(), x]), torch.cat([self.ctx.frozen_y, y])

    # -- what is learned ------------------------------------------------------------------
    def setup(self) -> None:
        """Per-stage preparation (train experts, warm-start networks). Runs once, before iteration 0."""

    def extra_params(self) -> list[tuple[torch.Tensor, float]]:
        """Additional learnable tensors and their learning rates (MTT's step size)."""
        return []

    def loss(self, stored: torch.Tensor, it: int) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, stored: torch.Tensor, it: int) -> None:
        """Hook after each update of S_i (gradient matching updates its network here)."""

    def learned_lr(self) -> Optional[float]:
        """The lr a network should use to train on this stage's images, if the method learns one."""
        return None
