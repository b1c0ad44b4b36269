"""Plain supervised training and scoring, shared by evaluation, transitions and expert runs."""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import DSA


def seed_of(*parts: int) -> int:
    """A deterministic 31-bit seed derived from integers (stage, model index, ...)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % (2 ** 31 - 1)


def draw_seed(g: torch.Generator) -> int:
    """The next 31-bit seed from ``g``: how every sub-draw (augmentation, minibatch) gets its seed."""
    return int(torch.randint(2 ** 31 - 1, (1,), generator=g))


class SGD:
    """``torch.optim.SGD``'s update (momentum, weight decay; no dampening, no Nesterov), in this module.

    Why not torch.optim: its first call imports ``torch._dynamo`` (1.3-1.7 s, a twentieth of the default
    run, for a compiler the engine never uses), and every step passes through its profiling hooks. The
    arithmetic is torch's single-tensor path, operation for operation, so the result is bitwise the same
    (``tests/test_evaluate.py::test_sgd_is_torch_optim_sgd``); ``param_groups`` and ``state[p]
    ["momentum_buffer"]`` read and write as torch's do.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        groups = list(params)
        if not groups or not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **g,
                              "params": list(g["params"])} for g in groups]
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=decay) if decay != 0 else p.grad
                if momentum != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = torch.clone(grad).detach()
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-lr)


def make_sgd(net: nn.Module | Sequence[torch.Tensor], lr: float, momentum: float = 0.9,
             weight_decay: float = 5e-4) -> SGD:
    """The field's SGD for a network, or for stacked parameters (``train_together``)."""
    params = net.parameters() if isinstance(net, nn.Module) else list(net)
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_epochs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, opt: SGD,
                 lr: float, batch: int, aug: Optional[DSA], seed: int, decay_at_half: bool = True,
                 on_epoch: Optional[Callable[[int], None]] = None) -> None:
    """Train ``net`` for ``epochs`` passes over (x, y); lr x0.1 after half, as in the field's protocol."""
    if len(x) == 0 or epochs == 0:
        return
    net.train()
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 if decay_at_half and epoch >= epochs // 2 else 1.0)
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch].to(x.device)
            xb = x[idx]
            if aug:
                xb = aug(xb, draw_seed(g), siamese=False)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch:
            on_epoch(epoch)


def trains_together(batched: Optional[bool], norm: str, count: int, device: torch.device) -> bool:
    """Whether ``count`` networks train together (vmap): the user's choice, else the path measured
    faster: together on a GPU, one after another on a CPU; never with BatchNorm (running statistics)
    or a single network. The evaluation's networks and MTT's experts both ask here.

    On a CPU, at one torch thread (each lane of a run on 2 cores, progressive.SideLane), one after another
    was faster at every width and image size, for the evaluation (0.38-1.00x together) and for MTT's
    experts (0.43-0.84x; bench/speed.py --only eval_widths,experts). Together won only with two threads
    and only for the smallest networks (width 32 on 8 px digits, 1.04-1.35x, scratch); a rule on the
    thread count would make the path, and so the last bits of an accuracy, depend on how many threads a
    run had, and re-evaluating a bundle would no longer give its run's accuracies to the bit."""
    if norm == "batch" or count < 2:
        return False
    if batched is not None:
        return batched
    return device.type == "cuda"


def stacked_forward(base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    x: torch.Tensor) -> torch.Tensor:
    """N networks' outputs in one batched (vmap) call: ``x`` is (N, batch, ...), network j reads ``x[j]``
    with its slice of the stacked ``params`` and ``buffers``; ``base`` is the structure (meta device)."""
    call = lambda p, b, xb: torch.func.functional_call(base, (p, b), (xb,))  # noqa: E731
    return torch.func.vmap(call)(params, buffers, x)


def train_together(base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor, epochs: int, opt: SGD, lr: float, batch: int,
                   aug: Optional[DSA], seeds: Sequence[int], decay_at_half: bool = True,
                   arithmetic: Callable[[], ContextManager] = nullcontext,
                   on_epoch: Optional[Callable[[int], None]] = None) -> None:
    """:func:`train_epochs` for N networks at once: ``params`` and ``buffers`` stacked by
    ``torch.func.stack_module_state``, ``base`` the network's structure (on the meta device), one
    batched (vmap) forward and backward per step.

    Network j draws its minibatch order and augmentation from ``seeds[j]`` exactly as train_epochs
    draws them from its seed, and the loss is the sum of the per-network means, so each network's
    gradient is its own and SGD's update is elementwise: the result is train_epochs' network by
    network, up to floating-point summation order. ``arithmetic``: the context of the forward pass."""
    n = len(x)
    if n == 0 or epochs == 0:
        return
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 if decay_at_half and epoch >= epochs // 2 else 1.0)
        orders = [torch.randperm(n, generator=g).to(x.device) for g in gens]
        for start in range(0, n, batch):
            idx = [o[start:start + batch] for o in orders]
            xb = [x[i] for i in idx]
            if aug:
                xb = [aug(b, draw_seed(g), siamese=False) for b, g in zip(xb, gens)]
            with arithmetic():
                out = stacked_forward(base, params, buffers, torch.stack(xb))
            yb = torch.stack([y[i] for i in idx])
            loss = F.cross_entropy(out.float().flatten(0, 1), yb.flatten()) * len(gens)  # = sum of per-network means
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch:
            on_epoch(epoch)


def predict(net: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    net.train()
    return out


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(net, x) == y).float().mean().item()


def flat_params(net: nn.Module) -> torch.Tensor:
    """A copy (never a view: see PDD.md's CPU pitfall) of all parameters as one vector."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
