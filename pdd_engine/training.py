"""Plain supervised training and scoring, shared by evaluation, transitions and expert runs."""

from __future__ import annotations

from typing import Callable, Optional

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


def make_sgd(net: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_epochs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, opt: torch.optim.Optimizer,
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
