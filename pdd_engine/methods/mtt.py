"""MTT: matching training trajectories (Cazenavette et al. 2022), with a learnable step size.

Experts are trained on real data and checkpointed every epoch. Under PDD, stage i's experts start
from a network first trained on U_{i-1} (the transition), so they describe the *next* phase of
training. Trajectories are cached by the content hash of U_{i-1} and the expert settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import torch

from .. import models
from ..errors import MemoryBudgetError
from ..executor import gpus_for
from ..registry import Params, Work, param, register
from ..training import SGD, draw_seed, flat_params, seed_of, train_epochs, train_together, trains_together
from . import unroll
from .base import Method, StageContext, unit_context

if TYPE_CHECKING:
    from ..config import DistillConfig

EXPERT_BATCH = 256


def expert_trajectories(ctx: StageContext) -> torch.Tensor:
    """(num_experts, epochs + 1, n_params) checkpoints; computed once per stage context, then cached.
    The experts train together in one unit where :func:`experts_together` says so, else each is an
    independent unit (:func:`train_experts`, sharing :meth:`StageContext.unit_shared`) that the run's
    executor may place on another process or machine; the trajectories are the same either way, up to
    floating-point summation order."""
    c: MTTParams = ctx.cfg.params
    epochs = c.max_start_epoch + c.expert_epochs
    n_params = sum(p.numel() for p in ctx.new_model(0).parameters())
    together = experts_together(ctx.cfg, ctx.device)
    groups = [list(range(c.num_experts))] if together else [[e] for e in range(c.num_experts)]

    def train() -> dict:
        shared = ctx.unit_shared()
        ctx.report(f"training experts: {c.num_experts} on the {ctx.units.name} executor"
                   f"{', together (vmap)' if together else ''}")
        trajs = ctx.units.map(train_experts, groups, shared, ctx.cancel, gpus=gpus_for(ctx.device),
                              done=lambda k: ctx.report(f"expert {sum(map(len, groups[:k]))}/{c.num_experts} trained"))
        return {"trajectories": torch.cat(trajs)}

    def check(t: dict) -> Optional[str]:
        want = (c.num_experts, epochs + 1, n_params)
        got = tuple(t["trajectories"].shape) if "trajectories" in t else None
        return None if got == want else f"expert trajectories of shape {got}, expected {want}"

    return ctx.cached("experts", train, check)["trajectories"].to(ctx.device)


def experts_together(cfg: DistillConfig, device: torch.device) -> bool:
    """Whether a stage's experts train together (vmap): ``batched_experts``, else where measured faster
    (:func:`pdd_engine.training.trains_together`; ``bench/speed.py --only experts``)."""
    p: MTTParams = cfg.params
    return trains_together(p.batched_experts, cfg.norm, p.num_experts, device)


def train_experts(shared: dict, ids: list[int]) -> torch.Tensor:
    """Experts ``ids``' trajectories, (len(ids), epochs + 1, n_params) on the CPU: a pure function of
    ``shared`` (:meth:`StageContext.unit_shared`) and ``ids``, so any executor gives the same result.
    Expert e starts from its own initialisation (and transition) and draws its minibatches from its
    own seed; several ``ids`` train together in one batched call per step."""
    ctx = unit_context(shared)
    c: MTTParams = ctx.cfg.params
    device = ctx.device
    x, y = shared["x"][shared["idx"]].to(device), shared["y"][shared["idx"]].to(device)
    seeds = [seed_of(ctx.seed, 11, e) for e in ids]
    nets = ctx.transitioned(seeds, together=len(ids) > 1)
    epochs = c.max_start_epoch + c.expert_epochs
    if len(nets) == 1:
        net, checkpoints = nets[0], [flat_params(nets[0])]
        opt = SGD(net.parameters(), lr=c.expert_lr, momentum=0, weight_decay=0)
        train_epochs(net, x, y, epochs, opt, c.expert_lr, EXPERT_BATCH, ctx.aug, seeds[0], decay_at_half=False,
                     on_epoch=lambda _: checkpoints.append(flat_params(net)))
        return torch.stack(checkpoints)[None].cpu()
    params, buffers = torch.func.stack_module_state(nets)
    flat = lambda: torch.cat([p.detach().flatten(1) for p in params.values()], 1).clone()  # noqa: E731  (n, n_params)
    checkpoints = [flat()]
    opt = SGD(list(params.values()), lr=c.expert_lr, momentum=0, weight_decay=0)
    train_together(copy.deepcopy(nets[0]).to("meta"), params, buffers, x, y, epochs, opt, c.expert_lr, EXPERT_BATCH,
                   ctx.aug, seeds, decay_at_half=False, on_epoch=lambda _: checkpoints.append(flat()))
    return torch.stack(checkpoints, 1).cpu()


def expert_steps(p: "MTTParams", n_real: int) -> int:
    """SGD steps an expert takes between the matched checkpoints: expert_epochs x batches per epoch."""
    return p.expert_epochs * max(1, -(-n_real // EXPERT_BATCH))


def syn_steps_for(p: "MTTParams", steps: int) -> int:
    """Student steps: the user's, or as many as the expert takes in ``expert_epochs`` (at most 20).
    A student with more steps than its expert must shrink its learned lr to match, and then every
    network trained on the result is under-trained (PDD.md)."""
    return p.syn_steps if p.syn_steps is not None else max(1, min(20, steps))


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below a tenth of a GiB (a small budget must not read "0.0 GiB")."""
    return f"{n / 2 ** 30:.1f} GiB" if n >= 0.1 * 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def student_ahead_warning(syn_steps: int, steps: int) -> Optional[str]:
    """The warning when the student takes more steps than the expert it must match, or None."""
    if syn_steps <= steps:
        return None
    return (f"warning: syn_steps {syn_steps} is more than the {steps} steps the expert takes in expert_epochs; "
            f"the learned step size will shrink and networks trained on the result will be under-trained. "
            f"Fix: set syn_steps to {steps} or less (or leave it unset), or raise expert_epochs")


# Recorded iterations with a matching loss above 1 that make a stage's matching unstable (one can be an
# unlucky minibatch or augmentation draw; see overshoot_warning).
OVERSHOOTS = 3


def overshoot_warning(losses: list[list[float]], lr_img: float) -> Optional[str]:
    """The warning for a stage whose student overshot its expert, or None.

    MTT's loss is the student's distance to the expert's target over the start's distance to it: above 1,
    the student's steps on the images ended farther from the target than not moving would. A stable stage
    records none, or one where a minibatch or augmentation draw was unlucky. On 28-px MNIST at lr_img 100,
    the seed whose images trained networks far below the other seeds' recorded four such iterations in
    each run (its P = 1 and its first PDD stage), every other seed and stage at most one (docs/methods.md,
    *MTT's step sizes*). The run does not fail: its images exist, and the user decides."""
    over = [v for _, v in losses if v > 1]
    if len(over) < OVERSHOOTS:
        return None
    return (f"warning: the trajectory matching was unstable: in {len(over)} of {len(losses)} recorded iterations "
            f"the student ended farther from the expert's target than it started (loss above 1, up to "
            f"{max(over):.2f}), so networks trained on these images may score well below a stable run's. "
            f"Fix: lower lr_img (now {lr_img:g}; e.g. to a third: --lr-img, the studio's Image learning rate) "
            f"and run again")


@dataclass(frozen=True)
class MTTParams(Params):
    # None: as many student steps as the expert takes in expert_epochs, at most 20
    syn_steps: Optional[int] = param(None, "MTT: unrolled steps", "student steps per match; more than the expert's shrinks the learned step size", minimum=1, maximum=10 ** 4, server_max=100)
    expert_epochs: int = param(2, "MTT: expert epochs matched", "how far along the expert's trajectory one match reaches", minimum=1, maximum=10 ** 4, server_max=20)
    max_start_epoch: int = param(5, "MTT: latest expert epoch a match starts from", "later starts match later training (later stages need them)", minimum=0, maximum=10 ** 4, server_max=50)
    num_experts: int = param(5, "MTT: experts", "real-data training runs per stage to match; cached and reused", minimum=1, maximum=1000, server_max=100)
    expert_lr: float = param(0.01, "MTT: expert learning rate", "SGD learning rate of the expert runs", positive=True)
    lr_lr: float = param(1e-5, "MTT: learning rate of the learned step size", "how fast the student's own step size adapts", positive=True)
    batch_syn: Optional[int] = param(None, "MTT: synthetic batch per step", "smaller: less memory per unrolled step, noisier matches", minimum=1, maximum=10 ** 6, server_max=10000)
    # auto: full unless it would not fit in memory; changes memory and speed, not the result
    mtt_unroll: Literal["auto", "full", "bounded"] = param("auto", "MTT: unroll (memory strategy)", "bounded recomputes to save memory; the result is the same", semantic=False)
    # None: together on a GPU, on a CPU only for small networks (where bench/speed.py --only experts measured it faster)
    batched_experts: Optional[bool] = param(None, "MTT: train experts together", "vmap; empty: where measured faster; the same trajectories up to rounding", semantic=False, shown="hidden")


@register
class MTT(Method):
    name = "mtt"
    title = "MTT: trajectory matching"
    lr_img = 100.0
    Params = MTTParams
    memos = {"experts": ("num_experts", "max_start_epoch", "expert_epochs", "expert_lr")}

    @classmethod
    def automatic(cls, cfg: DistillConfig, size: int, n_train: int) -> dict[str, str]:
        p: MTTParams = cfg.params
        steps = expert_steps(p, n_train)
        return {"syn_steps": f"{syn_steps_for(p, steps)} (the {steps} steps an expert takes in expert_epochs, at most 20)",
                "batch_syn": "the whole union"}

    @classmethod
    def warnings(cls, cfg: DistillConfig, n_train: int) -> list[str]:
        p: MTTParams = cfg.params
        if p.syn_steps is None:
            return []
        warning = student_ahead_warning(p.syn_steps, expert_steps(p, n_train))
        return [warning] if warning else []

    @classmethod
    def health(cls, cfg: DistillConfig, losses: list[list[float]], learned_lr: float) -> Optional[str]:
        return overshoot_warning(losses, cfg.effective_lr_img)

    @classmethod
    def cost(cls, cfg: DistillConfig, classes: int, union: float, n_train: int, later: bool) -> Work:
        p: MTTParams = cfg.params
        steps = syn_steps_for(p, expert_steps(p, n_train))
        b = min(p.batch_syn or union, union)
        epochs = p.max_start_epoch + p.expert_epochs
        return Work(cfg.iterations * 3 * steps, cfg.iterations * 3 * steps * b, p.num_experts if later else 0,
                    [(n_train, epochs, EXPERT_BATCH)] * p.num_experts)

    @classmethod
    def extra_memory(cls, cfg: DistillConfig, channels: int, size: int, classes: int, union: int, n_train: int,
                     device) -> int:
        """The unroll the engine will pick (see setup), for the largest union."""
        p: MTTParams = cfg.params
        net = models.build_model(channels, classes, size, cfg.depth_for(size), cfg.width, cfg.norm)
        steps = syn_steps_for(p, expert_steps(p, n_train))
        batch = min(p.batch_syn or union, union)
        return unroll.plan(net, channels, size, batch, steps, p.mtt_unroll, torch.device(device), cfg.max_memory_gb).need

    def setup(self) -> None:
        ctx, c = self.ctx, self.ctx.cfg
        p: MTTParams = c.params
        self.model = ctx.new_model(0)
        steps = expert_steps(p, sum(len(i) for i in ctx.real_by_class))
        self.syn_steps = syn_steps_for(p, steps)
        if (warning := student_ahead_warning(self.syn_steps, steps)) is not None:
            ctx.report(warning)
        n_union = len(ctx.frozen_x) + ctx.ds.num_classes * self.ipc
        batch = min(p.batch_syn or n_union, n_union)
        u = unroll.plan(self.model, ctx.ds.channels, ctx.ds.size, batch, self.syn_steps, p.mtt_unroll, ctx.device,
                        c.max_memory_gb)
        self.bounded = u.bounded
        if u.need > 0.8 * u.have:
            raise MemoryBudgetError(
                f"an MTT unroll of {self.syn_steps} steps x batch {batch} needs about {size_text(u.need)} "
                f"({'bounded' if u.bounded else 'full'} unroll), {size_text(u.have)} is available",
                "set batch_syn (e.g. 32), mtt_unroll to bounded, or a smaller width")
        if u.bounded and p.mtt_unroll == "auto":
            ctx.report(f"full unroll needs ~{size_text(u.full)}: using the bounded-memory unroll")
        self.experts = expert_trajectories(ctx)
        self.syn_lr = torch.tensor(float(p.expert_lr), device=ctx.device, requires_grad=True)

    def extra_params(self):
        return [(self.syn_lr, self.ctx.cfg.params.lr_lr)]

    def loss(self, stored: torch.Tensor, it: int) -> torch.Tensor:
        c: MTTParams = self.ctx.cfg.params
        x, y = self.union(stored)
        e = int(torch.randint(len(self.experts), (1,), generator=self.g))
        t = int(torch.randint(max(1, c.max_start_epoch), (1,), generator=self.g))
        start, target = self.experts[e, t], self.experts[e, t + c.expert_epochs]
        seed = draw_seed(self.g)
        fn = unroll.unroll_loss_bounded if self.bounded else unroll.unroll_loss
        return fn(self.model, start, target, x, y, self.syn_lr, self.syn_steps, c.batch_syn, self.ctx.aug, seed)

    def learned_lr(self) -> float:
        return max(float(self.syn_lr.detach()), 1e-5)
