"""Datasets as normalised tensors, with everything needed to undo the normalisation.

A dataset comes from a registered source (:mod:`pdd_engine.datasets`) as [0, 1] arrays; here it is
subsampled, resized, normalised per channel (then ZCA-whitened if asked) and fingerprinted by content,
the same for every source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Optional

import numpy as np
import torch

from .datasets import NORMALISATION, find
from .datasets.formats import stratified_subset


@dataclass
class ZCA:
    """ZCA whitening (kornia-style, regularised by ``eps``), fitted on the training set."""

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D)
    inverse: torch.Tensor  # (D, D)

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 0.1) -> "ZCA":
        flat = x.reshape(len(x), -1).double()
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / (len(x) - 1)
        u, s, _ = torch.linalg.svd(cov)
        matrix = u @ torch.diag(1.0 / torch.sqrt(s + eps)) @ u.T
        inverse = u @ torch.diag(torch.sqrt(s + eps)) @ u.T
        return cls(mean.float(), matrix.float(), inverse.float())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        return ((flat - self.mean.to(flat)) @ self.matrix.to(flat)).reshape(x.shape)

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        return (flat @ self.inverse.to(flat) + self.mean.to(flat)).reshape(x.shape)


@dataclass
class Dataset:
    """Train and test tensors (N, C, H, W), normalised per channel (and ZCA-whitened if set)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: Optional[ZCA] = None
    source: str = ""
    fingerprint: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def size(self) -> int:
        return self.x_train.shape[-1]

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Map model-space images back to [0, 1] pixels for viewing and export."""
        return self.pixels(x.detach().float().cpu()).clamp(0, 1)

    def clamp_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images ``x`` with every pixel clipped to [0, 1] (through the whitening, if any): the
        nearest images a camera could have taken, where an update pushed pixels past black or white."""
        return self.from_pixels(self.pixels(x).clamp(0, 1))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images as pixels on the [0, 1] scale (unclipped): whitening and normalisation undone."""
        mean, std = self.stats(x)
        return (self.zca.undo(x) if self.zca is not None else x) * std + mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pixels`: normalised, then whitened if the dataset is."""
        mean, std = self.stats(pixels)
        x = (pixels - mean) / std
        return self.zca.apply(x) if self.zca is not None else x

    def stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel mean and std, shaped (1, C, 1, 1) on ``like``'s device and dtype."""
        return tuple(torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1) for v in (self.mean, self.std))

    @cached_property
    def eval_view(self) -> "Dataset":
        """What evaluation needs (the test split and the shapes) without the training set; made once
        per dataset, so an executor that ships it to other processes ships it once per run."""
        return replace(self, x_train=self.x_train[:1], y_train=self.y_train[:1])

    def indices_by_class(self) -> list[torch.Tensor]:
        return [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]


def from_unit(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray, classes: list[str], zca: bool = False, source: str = "") -> Dataset:
    """Build a :class:`Dataset` from [0, 1] float arrays (N, C, H, W) and integer labels."""
    xtr = torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32)
    xte = torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32)
    h = hashlib.sha256()
    for a in (xtr, torch.as_tensor(y_train), xte, torch.as_tensor(y_test)):
        h.update(a.numpy().tobytes())
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-6)
    norm = lambda x: (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)  # noqa: E731
    xtr, xte = norm(xtr), norm(xte)
    whitening = None
    if zca:
        whitening = ZCA.fit(xtr)
        xtr, xte = whitening.apply(xtr), whitening.apply(xte)
    return Dataset(name, xtr, torch.as_tensor(y_train, dtype=torch.long), xte,
                   torch.as_tensor(y_test, dtype=torch.long), list(classes),
                   tuple(mean.tolist()), tuple(std.tolist()), whitening, source, h.hexdigest()[:16])


def load_raw(name: str, data_root: Optional[str], image_size: Optional[int] = None) -> tuple:
    return find(name).load(data_root, image_size, name)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    t = torch.as_tensor(x)
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0, 1).numpy()


def load_dataset(name: str, data_root: Optional[str] = None, zca: bool = False,
                 image_size: Optional[int] = None, max_train: Optional[int] = None) -> Dataset:
    """Load, optionally subsample (stratified, seed 0) and resize, then normalise a dataset."""
    xtr, ytr, xte, yte, classes, source = load_raw(name, data_root, image_size)
    if max_train is not None and max_train < len(ytr):
        keep = stratified_subset(ytr, max_train, seed=0)
        xtr, ytr = xtr[keep], ytr[keep]
        source += f", stratified {len(keep)}-example train subset (seed 0)"
    if image_size is not None and image_size != xtr.shape[-1]:
        xtr, xte = resize(xtr, image_size), resize(xte, image_size)
    return from_unit(name, xtr, ytr, xte, yte, classes, zca=zca, source=source)


def dataset_for(cfg) -> Dataset:
    """The dataset a :class:`~pdd_engine.config.DistillConfig` names, preprocessed as it says."""
    return load_dataset(cfg.dataset, cfg.data_root, cfg.zca, cfg.image_size, cfg.max_train)


def dataset_info(ds: Dataset) -> dict:
    """What run records, events and manifests say about a dataset."""
    return {"name": ds.name, "classes": ds.classes, "channels": ds.channels, "size": ds.size,
            "train": len(ds.y_train), "test": len(ds.y_test), "source": ds.source, "fingerprint": ds.fingerprint,
            "licence": find(ds.name).licence, "normalisation": NORMALISATION}


def to_uint8(ds: Dataset, x: torch.Tensor) -> np.ndarray:
    """Model-space images as (N, H, W, C) uint8 pixels."""
    return (ds.to_unit(x).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
