"""MTT: matching training trajectories (Cazenavette et al. 2022), with a learnable step size.

Experts are trained on real data and checkpointed every epoch. Under PDD, stage i's experts start
from a network first trained on U_{i-1} (the transition), so they describe the *next* phase of
training. Trajectories are cached by the content hash of U_{i-1} and the expert settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..augment import DSA
from ..errors import MemoryBudgetError
from ..training import draw_seed, flat_params, seed_of, train_epochs
from ..config import DistillConfig
from ..models import build_model
from .base import Method, StageContext
from .spec import Params, Work, param, register

EXPERT_BATCH = 256


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def unroll_loss(model: nn.Module, start: torch.Tensor, target: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                syn_lr: torch.Tensor, syn_steps: int, batch_syn: Optional[int], aug: Optional[DSA],
                seed: int) -> torch.Tensor:
    """Normalised parameter distance after ``syn_steps`` differentiable SGD steps on (x, y).

    loss = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2, differentiable in x and syn_lr.
    A pure function of its inputs and ``seed`` (minibatch order and augmentation draws).
    """
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    b = min(batch_syn or n, n)
    p = start.clone().requires_grad_(True)
    for _ in range(syn_steps):
        idx = torch.randperm(n, generator=g)[:b].to(x.device)
        xb = x[idx]
        if aug:
            xb = aug(xb, draw_seed(g), siamese=False)
        ce = F.cross_entropy(functional_call(model, unflatten(model, p), (xb,)), y[idx])
        (grad,) = torch.autograd.grad(ce, p, create_graph=True)
        p = p - syn_lr * grad
    return ((p - target) ** 2).sum() / ((start - target) ** 2).sum().clamp_min(1e-12)


class BoundedUnroll(torch.autograd.Function):
    """The same loss and gradient as :func:`unroll_loss`, in memory that does not grow with steps.

    Forward runs the student without a graph, keeping only each step's parameter vector, batch
    indices and augmentation seed. Backward walks the steps in reverse (as the constant-memory
    variant of trajectory matching does): with lambda_N = dL/dtheta_N, for each step it recomputes
    g_t = grad CE(theta_t, X_t) with a graph and takes one vector-Jacobian product of <g_t, lambda_{t+1}>:
        dL/dX += -lr * d<g_t, lambda>/dX,  dL/dlr += -<g_t, lambda>,  lambda_t = lambda - lr * d<g_t, lambda>/dtheta.
    Only one step's activations are alive at a time; the parameter checkpoints are steps x n_params.
    """

    @staticmethod
    def forward(ctx, x, syn_lr, model, start, target, y, syn_steps, batch_syn, aug, seed):
        g = torch.Generator().manual_seed(seed)
        n = len(x)
        b = min(batch_syn or n, n)
        p, thetas, plan = start.clone(), [], []
        for _ in range(syn_steps):
            idx = torch.randperm(n, generator=g)[:b].to(x.device)
            aseed = draw_seed(g) if aug else 0
            thetas.append(p)
            grad = step_grad(model, p, x, y, idx, aug, aseed, create_graph=False)
            p = p - syn_lr * grad
            plan.append((idx, aseed))
        denom = ((start - target) ** 2).sum().clamp_min(1e-12)
        ctx.save_for_backward(x, syn_lr, target, denom, p, *thetas)
        ctx.rest = (model, y, aug, plan)
        return ((p - target) ** 2).sum() / denom

    @staticmethod
    def backward(ctx, grad_out):
        x, syn_lr, target, denom, p_final, *thetas = ctx.saved_tensors
        model, y, aug, plan = ctx.rest
        lam = grad_out * 2 * (p_final - target) / denom
        dx, dlr = torch.zeros_like(x), torch.zeros_like(syn_lr)
        for theta, (idx, aseed) in zip(reversed(thetas), reversed(plan)):
            with torch.enable_grad():
                th = theta.detach().requires_grad_(True)
                xl = x.detach().requires_grad_(True)
                grad = step_grad(model, th, xl, y, idx, aug, aseed, create_graph=True)
                dot = (grad * lam).sum()
                d_th, d_x = torch.autograd.grad(dot, (th, xl))
            dlr -= dot.detach()
            dx -= syn_lr.detach() * d_x
            lam = lam - syn_lr.detach() * d_th
        return dx, dlr, None, None, None, None, None, None, None, None


def step_grad(model, p, x, y, idx, aug, aseed, create_graph):
    xb = x[idx]
    if aug:
        xb = aug(xb, aseed, siamese=False)
    with torch.enable_grad():
        p = p if p.requires_grad else p.detach().requires_grad_(True)
        ce = F.cross_entropy(functional_call(model, unflatten(model, p), (xb,)), y[idx])
        (grad,) = torch.autograd.grad(ce, p, create_graph=create_graph)
    return grad


def unroll_loss_bounded(model, start, target, x, y, syn_lr, syn_steps, batch_syn, aug, seed) -> torch.Tensor:
    """Bounded-memory twin of :func:`unroll_loss` (same arguments, same value and gradients)."""
    return BoundedUnroll.apply(x, syn_lr, model, start, target, y, syn_steps, batch_syn, aug, seed)


def activation_elems(model: nn.Module, channels: int, size: int) -> int:
    """Activation elements per sample for one forward pass (measured with hooks)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return total


def unroll_memory_bytes(model: nn.Module, channels: int, size: int, batch: int, syn_steps: int,
                        checkpoints: int = 0) -> int:
    """Estimated peak bytes of an MTT unroll whose graph spans ``syn_steps`` steps: each keeps its
    activations (~1.5x their forward size, fitted to bench/speed.py's measured peaks on CPU, where
    the estimate stays above the measurement) and parameter vectors (x3).
    ``checkpoints``: parameter vectors kept outside the graph (the bounded unroll keeps one a step)."""
    n_params = sum(p.numel() for p in model.parameters())
    per_step = int(batch * activation_elems(model, channels, size) * 4 * 1.5) + n_params * 4 * 3
    return syn_steps * per_step + checkpoints * n_params * 4


def available_memory_bytes(device: torch.device, override_gb: Optional[float]) -> int:
    if override_gb is not None:
        return int(override_gb * 2 ** 30)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def expert_trajectories(ctx: StageContext) -> torch.Tensor:
    """(num_experts, epochs + 1, n_params) checkpoints; computed once per stage context, then cached."""
    c: MTTParams = ctx.cfg.params
    epochs = c.max_start_epoch + c.expert_epochs
    n_params = sum(p.numel() for p in ctx.new_model(0).parameters())

    def train() -> dict:
        real_idx = torch.cat(ctx.real_by_class)
        x, y = ctx.ds.x_train[real_idx].to(ctx.device), ctx.ds.y_train[real_idx].to(ctx.device)
        trajs = []
        for e in range(c.num_experts):
            ctx.check_cancel()
            ctx.report(f"training expert {e + 1}/{c.num_experts}")
            s = seed_of(ctx.seed, 11, e)
            net = ctx.transition(ctx.new_model(s), s)
            checkpoints = [flat_params(net)]
            opt = torch.optim.SGD(net.parameters(), lr=c.expert_lr, momentum=0, weight_decay=0)
            train_epochs(net, x, y, epochs, opt, c.expert_lr, EXPERT_BATCH, ctx.aug, s,
                         decay_at_half=False, on_epoch=lambda _: checkpoints.append(flat_params(net)))
            trajs.append(torch.stack(checkpoints))
        return {"trajectories": torch.stack(trajs)}

    def check(t: dict) -> Optional[str]:
        want = (c.num_experts, epochs + 1, n_params)
        got = tuple(t["trajectories"].shape) if "trajectories" in t else None
        return None if got == want else f"expert trajectories of shape {got}, expected {want}"

    return ctx.cached("experts", train, check)["trajectories"].to(ctx.device)


def expert_steps(p: "MTTParams", n_real: int) -> int:
    """SGD steps an expert takes between the matched checkpoints: expert_epochs x batches per epoch."""
    return p.expert_epochs * max(1, -(-n_real // EXPERT_BATCH))


def syn_steps_for(p: "MTTParams", steps: int) -> int:
    """Student steps: the user's, or as many as the expert takes in ``expert_epochs`` (at most 20).
    A student with more steps than its expert must shrink its learned lr to match, and then every
    network trained on the result is under-trained (PDD.md)."""
    return p.syn_steps if p.syn_steps is not None else max(1, min(20, steps))


def student_ahead_warning(syn_steps: int, steps: int) -> Optional[str]:
    """The warning when the student takes more steps than the expert it must match, or None."""
    if syn_steps <= steps:
        return None
    return (f"warning: syn_steps {syn_steps} is more than the {steps} steps the expert takes in expert_epochs; "
            f"the learned step size will shrink and networks trained on the result will be under-trained. "
            f"Fix: set syn_steps to {steps} or less (or leave it unset), or raise expert_epochs")


@dataclass(frozen=True)
class MTTParams(Params):
    # None: as many student steps as the expert takes in expert_epochs, at most 20
    syn_steps: Optional[int] = param(None, "MTT: unrolled steps (empty: the expert's steps, at most 20)", minimum=1)
    expert_epochs: int = param(2, "MTT: expert epochs matched", minimum=1)
    max_start_epoch: int = param(5, "MTT: latest expert epoch a match starts from", minimum=0)
    num_experts: int = param(5, "MTT: experts", minimum=1)
    expert_lr: float = param(0.01, "MTT: expert learning rate", positive=True)
    lr_lr: float = param(1e-5, "MTT: learning rate of the learned step size", positive=True)
    batch_syn: Optional[int] = param(None, "MTT: synthetic batch per step (empty: the whole union)", minimum=1)
    # auto: full unless it would not fit in memory; changes memory and speed, not the result
    mtt_unroll: Literal["auto", "full", "bounded"] = param("auto", "MTT: unroll (memory strategy)", semantic=False)


@register
class MTT(Method):
    name = "mtt"
    title = "MTT: trajectory matching"
    lr_img = 100.0
    Params = MTTParams
    memos = {"experts": ("num_experts", "max_start_epoch", "expert_epochs", "expert_lr")}

    @classmethod
    def warnings(cls, cfg: DistillConfig, n_train: int) -> list[str]:
        p: MTTParams = cfg.params
        if p.syn_steps is None:
            return []
        warning = student_ahead_warning(p.syn_steps, expert_steps(p, n_train))
        return [warning] if warning else []

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
        net = build_model(channels, classes, size, cfg.depth_for(size), cfg.width, cfg.norm)
        steps = syn_steps_for(p, expert_steps(p, n_train))
        batch = min(p.batch_syn or union, union)
        full = unroll_memory_bytes(net, channels, size, batch, steps)
        bounded = unroll_memory_bytes(net, channels, size, batch, 1, steps)
        have = available_memory_bytes(torch.device(device), cfg.max_memory_gb)
        use_bounded = p.mtt_unroll == "bounded" or (p.mtt_unroll == "auto" and full > 0.5 * have)
        return bounded if use_bounded else full

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
        full = unroll_memory_bytes(self.model, ctx.ds.channels, ctx.ds.size, batch, self.syn_steps)
        bounded = unroll_memory_bytes(self.model, ctx.ds.channels, ctx.ds.size, batch, 1, self.syn_steps)
        have = available_memory_bytes(ctx.device, c.max_memory_gb)
        self.bounded = p.mtt_unroll == "bounded" or (p.mtt_unroll == "auto" and full > 0.5 * have)
        need = bounded if self.bounded else full
        if need > 0.8 * have:
            raise MemoryBudgetError(
                f"an MTT unroll of {self.syn_steps} steps x batch {batch} needs about {need / 2**30:.1f} GiB "
                f"({'bounded' if self.bounded else 'full'} unroll), {have / 2**30:.1f} GiB is available",
                "set batch_syn (e.g. 32), mtt_unroll to bounded, or a smaller width")
        if self.bounded and p.mtt_unroll == "auto":
            ctx.report(f"full unroll needs ~{full / 2**30:.1f} GiB: using the bounded-memory unroll")
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
        fn = unroll_loss_bounded if self.bounded else unroll_loss
        return fn(self.model, start, target, x, y, self.syn_lr, self.syn_steps, c.batch_syn, self.ctx.aug, seed)

    def learned_lr(self) -> float:
        return max(float(self.syn_lr.detach()), 1e-5)
