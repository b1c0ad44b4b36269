"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021).

Every random draw comes from a generator seeded by the caller, so calling with the same seed on a
real batch and on a synthetic batch applies the same transformation to both ("siamese"), and the
whole augmentation is differentiable with respect to the images. As in the reference code, one
operation group of the strategy is drawn per call ("S" mode), per-sample parameters otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SCALE, ROTATE, CROP_PAD, CUTOUT = 1.2, 15.0, 0.125, 0.5
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5


def _rand(g: torch.Generator, n: int, x: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, generator=g).to(x.device, x.dtype)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def color(x, g):
    n = len(x)
    x = x + (_rand(g, n, x) - 0.5).view(n, 1, 1, 1) * BRIGHTNESS
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(g, n, x) * SATURATION).view(n, 1, 1, 1) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(g, n, x) + CONTRAST).view(n, 1, 1, 1) + m


def crop(x, g):
    n = len(x)
    shift = (_rand(g, 2 * n, x).view(n, 2) * 2 - 1) * CROP_PAD * 2  # grid units span 2
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    return _affine(x, theta)


def scale(x, g):
    n = len(x)
    s = _rand(g, 2 * n, x).view(n, 2) * (SCALE - 1.0 / SCALE) + 1.0 / SCALE
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    return _affine(x, theta)


def rotate(x, g):
    n = len(x)
    a = (_rand(g, n, x) - 0.5) * 2 * ROTATE / 180 * math.pi
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def flip(x, g):
    n = len(x)
    mask = (_rand(g, n, x) < 0.5).view(n, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def cutout(x, g):
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    cy = (_rand(g, n, x) * (h + 1 - ch % 2)).long().view(n, 1, 1)
    cx = (_rand(g, n, x) * (w + 1 - cw % 2)).long().view(n, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy).abs() <= ch // 2) & ((xs - cx).abs() <= cw // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


class DSA:
    """``DSA(ops)(x, seed)``: the same ``seed`` gives the same transformation."""

    def __init__(self, ops: Sequence[str]):
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown DSA operations {unknown}")
        self.ops = tuple(ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.ops:
            return x
        g = torch.Generator().manual_seed(int(seed))
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=g))]
        return OPS[op](x, g)
