"""MTT's differentiable student: N SGD steps on the synthetic union, differentiable in the images
and the learned step size. Two implementations with the same value and gradients: the full graph
(:func:`unroll_loss`), and a bounded-memory one that recomputes each step in the backward pass
(:class:`BoundedUnroll`). Plus what they cost in memory, for the engine's choice and the estimate.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..augment import DSA
from ..training import draw_seed


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


class UnrollPlan(NamedTuple):
    bounded: bool  # the bounded-memory unroll is used
    need: int  # peak bytes of the chosen unroll
    full: int  # peak bytes the full unroll would need
    have: int  # bytes available on the device


def plan(model: nn.Module, channels: int, size: int, batch: int, syn_steps: int, mode: str, device: torch.device,
         max_memory_gb: Optional[float]) -> UnrollPlan:
    """Which unroll a stage uses: ``mode`` full or bounded as asked; ``auto`` is full unless it would
    take more than half the available memory. The engine and the estimate both decide here."""
    full = unroll_memory_bytes(model, channels, size, batch, syn_steps)
    bounded = unroll_memory_bytes(model, channels, size, batch, 1, syn_steps)
    have = available_memory_bytes(device, max_memory_gb)
    use_bounded = mode == "bounded" or (mode == "auto" and full > 0.5 * have)
    return UnrollPlan(use_bounded, bounded if use_bounded else full, full, have)
