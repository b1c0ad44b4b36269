"""Gradient matching: DC (Zhao et al. 2021), DSA (Zhao & Bilen 2021) and IDC (Kim et al. 2022).

One PDD iteration is one update of the synthetic images. Every ``outer_loop`` iterations a fresh
network is drawn; under PDD it is first trained on U_{i-1} (the transition). Between updates the
network takes ``inner_loop`` SGD steps: on the synthetic union for DC/DSA, on real data for IDC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import math

from ..augment import DSA
from ..config import DistillConfig
from ..errors import PDDError
from ..training import draw_seed, seed_of
from .base import Method, Work, register


def layer_distance(gs: torch.Tensor, gr: torch.Tensor) -> torch.Tensor:
    """DC's per-output-unit distance: sum of (1 - cosine) over output units; 1-D tensors skipped."""
    if gs.dim() == 1:
        return gs.new_zeros(())
    gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    return (1 - F.cosine_similarity(gs, gr, dim=1, eps=1e-6)).sum()


def match(g_syn: list[torch.Tensor], g_real: list[torch.Tensor], metric: str) -> torch.Tensor:
    if metric == "mse":  # IDC: squared error on conv (4-D) gradients
        return sum(((s - r) ** 2).sum() for s, r in zip(g_syn, g_real) if s.dim() == 4)
    return sum(layer_distance(s, r) for s, r in zip(g_syn, g_real))


class GradientMatching(Method):
    metric = "cos"
    lr_img = 0.1
    params = ("batch_real", "outer_loop", "inner_loop")

    @classmethod
    def cost(cls, cfg: DistillConfig, classes: int, union: float, n_train: int, later: bool) -> Work:
        inner = cfg.batch_real if cls.name == "idc" else union  # IDC's inner steps train on real data
        it = cfg.iterations
        return Work(it * (3 * classes + cfg.inner_loop), it * (classes * cfg.batch_real + 3 * union + cfg.inner_loop * inner),
                    math.ceil(it / cfg.outer_loop) if later else 0)

    def matching_aug(self) -> DSA:
        return self.ctx.aug

    def setup(self) -> None:
        self.net = None
        self.inner_opt = None

    def fresh_net(self, it: int) -> None:
        s = seed_of(self.ctx.seed, 13, it)
        self.net = self.ctx.transition(self.ctx.new_model(s), s)
        self.inner_opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.5)

    def loss(self, stored: torch.Tensor, it: int) -> torch.Tensor:
        ctx = self.ctx
        if it % ctx.cfg.outer_loop == 0 or self.net is None:
            self.fresh_net(it)
        x, y = self.union(stored)
        params = [p for p in self.net.parameters()]
        aug = self.matching_aug()
        total = x.new_zeros(())
        for c in range(ctx.ds.num_classes):
            real = ctx.real_batch(c, ctx.cfg.batch_real, self.g)
            syn = x[y == c]
            seed = draw_seed(self.g)
            yr = torch.full((len(real),), c, device=ctx.device)
            ys = torch.full((len(syn),), c, device=ctx.device)
            g_real = torch.autograd.grad(F.cross_entropy(self.net(aug(real, seed)), yr), params)
            g_real = [g.detach() for g in g_real]
            g_syn = torch.autograd.grad(F.cross_entropy(self.net(aug(syn, seed)), ys), params, create_graph=True)
            total = total + match(g_syn, g_real, self.metric)
        return total

    def inner_batches(self, stored: torch.Tensor):
        x, y = self.union(stored.detach())
        yield x, y

    def after_step(self, stored: torch.Tensor, it: int) -> None:
        if (it + 1) % self.ctx.cfg.outer_loop == 0:
            return  # the next iteration draws a fresh network anyway
        for _ in range(self.ctx.cfg.inner_loop):
            for xb, yb in self.inner_batches(stored):
                xb = self.ctx.aug(xb, draw_seed(self.g), siamese=False)
                loss = F.cross_entropy(self.net(xb), yb)
                self.inner_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.inner_opt.step()


@register
class DC(GradientMatching):
    """Gradient matching without augmentation in the matching step (the original DC)."""

    name = "dc"
    title = "DC: gradient matching"

    @classmethod
    def manifest(cls, cfg: DistillConfig, size: int) -> dict:
        return {**super().manifest(cfg, size), "matching_augmentation": "none"}

    def matching_aug(self) -> DSA:
        return DSA([])


@register
class DSAMatching(GradientMatching):
    """DC with differentiable siamese augmentation: one shared draw for the real and synthetic batch."""

    name = "dsa"
    title = "DSA: gradient matching + siamese augmentation"


@register
class IDC(GradientMatching):
    """Multi-formation: each stored image holds factor x factor tiles, each decoded to a full image."""

    name = "idc"
    title = "IDC: gradient matching + multi-formation"
    lr_img = 0.01
    params = GradientMatching.params + ("idc_factor",)
    metric = "mse"

    @classmethod
    def images_per_stored(cls, cfg: DistillConfig, size: int) -> int:
        return cfg.idc_factor_for(size) ** 2

    @classmethod
    def manifest(cls, cfg: DistillConfig, size: int) -> dict:
        return {**super().manifest(cfg, size), "resolved": {"idc_factor": cfg.idc_factor_for(size)},
                "training_form": "stored images decode to training images by IDC multi-formation"}

    @property
    def factor(self) -> int:
        return self.ctx.cfg.idc_factor_for(self.ctx.ds.size)

    def setup(self) -> None:
        super().setup()
        size, f = self.ctx.ds.size, self.factor
        if size % f:
            raise PDDError(f"IDC factor {f} does not divide the image size {size}",
                           f"use --idc-factor {max(d for d in (1, 2, 3, 4) if size % d == 0)} or --image-size {size - size % f}")

    def init_images(self) -> torch.Tensor:
        """Real-image mosaics: each stored image tiles factor^2 downsampled real images of its class."""
        ctx, f = self.ctx, self.factor
        if ctx.cfg.init == "noise" or f == 1:
            return super().init_images()
        size = ctx.ds.size
        tiles = []
        for c in range(ctx.ds.num_classes):
            real = ctx.real_batch(c, self.ipc * f * f, self.g)
            if len(real) < self.ipc * f * f:  # small classes: reuse images
                real = real[torch.arange(self.ipc * f * f) % len(real)]
            small = F.interpolate(real, size=(size // f, size // f), mode="bilinear", align_corners=False, antialias=True)
            tiles.append(small.reshape(self.ipc, f, f, ctx.ds.channels, size // f, size // f))
        t = torch.cat(tiles)  # (n, f, f, C, h, w) -> (n, C, f*h, f*w)
        return t.permute(0, 3, 1, 4, 2, 5).reshape(len(t), ctx.ds.channels, f * (size // f), f * (size // f))

    def decode(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, size = self.factor, self.ctx.ds.size
        if f == 1:
            return stored, self.labels()
        n, ch, h, w = stored.shape
        tiles = stored.reshape(n, ch, f, h // f, f, w // f).permute(0, 2, 4, 1, 3, 5).reshape(n * f * f, ch, h // f, w // f)
        images = F.interpolate(tiles, size=(size, size), mode="bilinear", align_corners=False)
        return images, self.labels().repeat_interleave(f * f)

    def inner_batches(self, stored: torch.Tensor):
        """IDC updates its network on real data between matching steps."""
        ctx = self.ctx
        idx = torch.cat(ctx.real_by_class)
        pick = idx[torch.randperm(len(idx), generator=self.g)[:ctx.cfg.batch_real]]
        yield ctx.ds.x_train[pick].to(ctx.device), ctx.ds.y_train[pick].to(ctx.device)
