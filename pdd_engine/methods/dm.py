"""DM: distribution matching (Zhao & Bilen 2023).

Per class, match the mean embedding of a real batch and of the class's synthetic images under a
randomly drawn network; one shared (siamese) DSA draw per class. Every class goes through the
network in one pass (:func:`class_means`), with the reference's draws. At stage 1 (and whenever
``transition_epochs`` is 0) every iteration draws a fresh random network, as the reference does.
Under PDD, later stages' embedding networks are first brought through the transition on
U_1..U_{i-1}; that costs training, so they come from a pool of ``dm_pool`` networks drawn at random
each iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch

from ..augment import DSA
from ..registry import Params, Work, param, register
from ..training import draw_seed, seed_of
from .base import Method

if TYPE_CHECKING:
    from ..config import DistillConfig


@dataclass(frozen=True)
class DMParams(Params):
    batch_real: int = param(128, "Real images per class per iteration", "real batch each class's mean embedding is matched against", minimum=1, maximum=10 ** 5, server_max=1024)
    dm_pool: int = param(16, "DM: pool of transitioned networks (stage 2 on)", "networks trained through earlier stages, drawn from per iteration", minimum=1, maximum=1000, server_max=64)


@register
class DM(Method):
    name = "dm"
    title = "DM: distribution matching"
    lr_img = 3.0  # chosen on digits at IPC 1
    Params = DMParams

    @classmethod
    def cost(cls, cfg: DistillConfig, classes: int, union: float, n_train: int, later: bool) -> Work:
        # every class's real batch forward only (~1/3 of forward + backward), then the union forward +
        # backward: two calls per iteration (class_means), however many classes
        p: DMParams = cfg.params
        transitions = p.dm_pool if later and cfg.transition_epochs else 0  # else fresh nets (setup)
        return Work(cfg.iterations * 2, cfg.iterations * (classes * p.batch_real / 3 + union), transitions)

    def setup(self) -> None:
        ctx = self.ctx
        self.pool = []
        if not len(ctx.frozen_x) or ctx.cfg.transition_epochs == 0:
            return  # no transition to pay for: a fresh random network every iteration
        ctx.check_cancel()
        seeds = [seed_of(ctx.seed, 7, k) for k in range(ctx.cfg.params.dm_pool)]
        self.pool = [net.requires_grad_(False) for net in ctx.transitioned(seeds)]

    def loss(self, stored: torch.Tensor, it: int) -> torch.Tensor:
        ctx = self.ctx
        x, y = self.union(stored)
        if self.pool:
            net = self.pool[int(torch.randint(len(self.pool), (1,), generator=self.g))]
        else:
            net = ctx.new_model(seed_of(ctx.seed, 7, it)).requires_grad_(False)
        k = ctx.ds.num_classes
        reals, seeds = [], []
        for c in range(k):  # the reference's draw order: class c's real batch, then its augmentation seed
            reals.append(ctx.real_batch(c, ctx.cfg.params.batch_real, self.g))
            seeds.append(draw_seed(self.g))
        by_class = torch.sort(y, stable=True).indices
        syn_sizes = torch.bincount(y, minlength=k).tolist()
        with torch.no_grad():
            real_means = class_means(net, ctx.aug, torch.cat(reals), [len(r) for r in reals], seeds, ctx.cfg.norm)
        syn_means = class_means(net, ctx.aug, x[by_class], syn_sizes, seeds, ctx.cfg.norm)
        return ((real_means - syn_means) ** 2).sum()


def class_means(net: torch.nn.Module, aug: DSA, x: torch.Tensor, sizes: list[int], seeds: list[int],
                norm: str) -> torch.Tensor:
    """Each class's mean embedding, (classes, features); ``x`` holds the classes one after another,
    ``sizes`` images each, class c augmented under ``seeds[c]`` (siamese). Every class goes through
    the network in one pass (a few calls per iteration instead of a few per class: on small images
    the calls cost more than the arithmetic); under batch norm a batch's statistics are its class's,
    as the reference's, so there each class passes alone."""
    if norm == "batch":
        return torch.stack([net.embed(aug(part, seed)).float().mean(0) for part, seed in zip(x.split(sizes), seeds)])
    emb = net.embed(aug.grouped(x, sizes, seeds)).float()  # float: a no-op but under bf16
    counts = torch.as_tensor(sizes, device=x.device)
    group = torch.repeat_interleave(torch.arange(len(sizes), device=x.device), counts)
    sums = emb.new_zeros(len(sizes), emb.shape[1]).index_add(0, group, emb)
    return sums / counts.to(emb.dtype).unsqueeze(1)
