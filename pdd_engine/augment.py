"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021).

Every random draw comes from a generator seeded by the caller. As in the reference code, one
operation of the strategy is drawn per call ("S" mode). Two kinds of call:

- **siamese** (matching real against synthetic, the default): *one* transform is drawn and applied
  to every sample of the batch (the original sets each sample's parameters to the first sample's).
  The same seed therefore gives the identical transform to a real batch of 128 and a synthetic batch
  of 2, which is what makes the matching signal meaningful.
- **per-sample** (``siamese=False``: training a network, the MTT student): each sample gets its own
  parameters, for more augmentation diversity.

The whole augmentation is differentiable with respect to the images.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

SCALE, ROTATE, CROP_PAD, CUTOUT = 1.2, 15.0, 0.125, 0.5
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _theta(x: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    return theta


# Every operation reads its uniform [0, 1) parameters ``r``, one row per sample (len(x), PARAMS[op]).
def color(x, r):
    r = r.reshape(len(x), 3, 1, 1, 1)
    x = x + (r[:, 0] - 0.5) * BRIGHTNESS
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (r[:, 1] * SATURATION) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (r[:, 2] + CONTRAST) + m


def crop(x, r):
    theta = _theta(x)
    theta[:, :, 2] = (r * 2 - 1) * CROP_PAD * 2  # grid units span 2
    return _affine(x, theta)


def scale(x, r):
    s = r * (SCALE - 1.0 / SCALE) + 1.0 / SCALE
    theta = _theta(x)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    return _affine(x, theta)


def rotate(x, r):
    a = (r[:, 0] - 0.5) * 2 * ROTATE / 180 * math.pi
    theta = _theta(x)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def flip(x, r):
    mask = (r[:, 0] < 0.5).view(len(x), 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def cutout(x, r):
    """Zero a k x k square, k = round(size / 2) (4 x 4 on 8 x 8), centred at a uniform position."""
    _, _, h, w = x.shape
    kh, kw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    cy = (r[:, 0] * (h + 1 - kh % 2)).long().view(-1, 1, 1) - kh // 2  # top-left corner, may lie outside
    cx = (r[:, 1] * (w + 1 - kw % 2)).long().view(-1, 1, 1) - kw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy) & (ys < cy + kh) & (xs >= cx) & (xs < cx + kw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}
PARAMS = {"color": 3, "crop": 2, "cutout": 2, "flip": 1, "scale": 2, "rotate": 1}  # uniform draws per sample


def mirror_note(ops: Sequence[str], mirrors: bool, title: str) -> Optional[str]:
    """The run's note where its augmentation mirrors images whose class a mirror changes (digits), else None.
    ``auto`` drops ``flip`` there, as IDC's reference does on MNIST and SVHN; the field's MTT, DM and PDD code
    keep it everywhere, and so do the numbers they published. A run that asks for it (a paper protocol)
    should say what it costs and how to choose the other (docs/methods.md, *Augmentation*)."""
    if mirrors or "flip" not in ops:
        return None
    kept = "_".join(o for o in ops if o != "flip") or "none"
    return (f"augmentation: flip mirrors {title} images left to right, and a mirrored digit is not that digit. "
            f"The field's MTT, DM and PDD code keep it; IDC's reference and the auto default drop it. "
            f"To drop it, set Augmentation to {kept} (--dsa-strategy {kept})")


class DSA:
    """``DSA(ops)(x, seed)``: the same ``seed`` gives the same transformation (see module doc)."""

    def __init__(self, ops: Sequence[str]):
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown DSA operations {unknown}")
        self.ops = tuple(ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: torch.Tensor, seed: int, siamese: bool = True) -> torch.Tensor:
        if not self.ops or len(x) == 0:
            return x
        op, r = self.draw(seed, 1 if siamese else len(x))
        return OPS[op](x, r.to(x.device, x.dtype).expand(len(x), -1))

    def draw(self, seed: int, n: int) -> tuple[str, torch.Tensor]:
        """The operation ``seed`` picks and its parameters for ``n`` samples, (n, PARAMS[op])."""
        g = torch.Generator().manual_seed(int(seed))
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=g))]
        return op, torch.rand(n, PARAMS[op], generator=g)

    def grouped(self, x: torch.Tensor, sizes: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """``cat([self(part, seed) for part, seed in zip(x.split(sizes), seeds)])`` (each group
        siamese under its own seed) in one call per operation drawn rather than one per group: DM
        augments every class's real and synthetic batch this way, a few hundred small calls per
        iteration otherwise."""
        if not self.ops or len(x) == 0:
            return x
        draws = [self.draw(seed, 1) for seed in seeds]
        group = torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes))
        rows, outs, order = {}, [], []
        for k, (op, r) in enumerate(draws):
            rows.setdefault(op, []).append((k, r))
        for op, picked in rows.items():
            members = torch.tensor([k for k, _ in picked])
            r = torch.cat([r for _, r in picked])  # one row per group that drew ``op``
            at = torch.isin(group, members).nonzero().squeeze(1)
            slot = torch.searchsorted(members, group[at])  # each sample's row of ``r``
            outs.append(OPS[op](x[at.to(x.device)], r[slot].to(x.device, x.dtype)))
            order.append(at)
        inverse = torch.empty(len(x), dtype=torch.long)
        inverse[torch.cat(order)] = torch.arange(len(x))
        return torch.cat(outs)[inverse.to(x.device)]
