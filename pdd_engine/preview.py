"""What a dataset is before any run: its facts and a few real images of every class.

A researcher picks data before a method, so front ends show this as soon as a dataset is chosen
(the studio's data panel, ``python -m pdd_engine preview``). A preview never downloads: a set that is
not on this machine gives what its registry entry knows (channels, size, classes, training size) and
no images, and says it will be downloaded on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .data import load_raw, resize
from .manifest import local_paths
from .datasets.userdata import sample_user_dataset
from .registry import find


@dataclass(frozen=True)
class DatasetPreview:
    name: str  # a user's data by its file name alone (folder:pets.zip): previews are shown to web visitors
    title: str
    availability: str  # "offline" or "needs download"
    licence: str
    num_classes: int
    channels: int
    size: int  # pixels per side, after image_size
    train: int
    test: Optional[int] = None  # unknown before a download
    classes: tuple[str, ...] = ()
    source: str = ""
    images: Optional[np.ndarray] = None  # (N, H, W, C) uint8, class-major, per_class of each class
    labels: Optional[np.ndarray] = None  # (N,) class index of each image
    train_per_class: tuple[int, ...] = ()  # training images of each class (imbalance shows here)

    def facts(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-ready (the API's and the CLI's answer)."""
        out = {k: getattr(self, k) for k in ("name", "title", "availability", "licence", "num_classes", "channels",
                                             "size", "train", "test", "source")}
        return {**out, "classes": list(self.classes), "train_per_class": list(self.train_per_class)}


def preview_dataset(name: str, data_root: Optional[str] = None, per_class: int = 8,
                    image_size: Optional[int] = None, seed: int = 0, shown_classes: Optional[int] = None,
                    shown_px: Optional[int] = None) -> DatasetPreview:
    """Facts and ``per_class`` random training images (drawn with ``seed``) of every class of ``name``
    (of its first ``shown_classes`` classes, at most ``shown_px`` a side, where given: what a page can show,
    whatever an upload holds; the facts are the data's).

    Reads the raw [0, 1] data (no normalisation or ZCA: what the files hold); a user's zip that cannot
    be read raises the same one-line :class:`~pdd_engine.errors.PDDError` a run would."""
    spec = find(name)
    shown = spec.name + Path(name[len(spec.name):]).name if spec.scheme else name
    if not spec.available(data_root):
        channels, size, classes, train = spec.shape or (0, 0, 0, 0)
        return DatasetPreview(shown, spec.title, "needs download", spec.licence, classes, channels,
                              image_size or size, train)
    if spec.scheme:  # a user's data: facts from the headers, only the shown images decoded
        s = sample_user_dataset(name, image_size, per_class, seed, shown_classes=shown_classes)
        x, labels, classes, counts, test, source = s["x"], s["y"], s["classes"], s["train"], s["test"], s["source"]
    else:
        xtr, ytr, xte, _, classes, source = load_raw(name, data_root, image_size)
        rng = np.random.default_rng(seed)
        pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:per_class]
                               for c in range(len(classes))[:shown_classes]])
        x, labels, counts, test = xtr[pick], ytr[pick], np.bincount(ytr, minlength=len(classes)), len(xte)
    for place in local_paths({"dataset": name, "data_root": data_root}):  # shown to web visitors: no server paths
        source = source.replace(place + "/", "").replace(place, ".")
    if image_size is not None and image_size != x.shape[-1]:
        x = resize(x, image_size)
    size = x.shape[-1]
    if shown_px is not None and size > shown_px:
        x = resize(x, shown_px)
    pixels = (np.transpose(x, (0, 2, 3, 1)) * 255).round().clip(0, 255).astype(np.uint8)
    counts = tuple(int(n) for n in counts)
    return DatasetPreview(shown, spec.title, "offline", spec.licence, len(classes), x.shape[1], size,
                          sum(counts), test, tuple(classes), source, pixels, labels.astype(np.int64), counts)


def montage(preview: DatasetPreview, pad: int = 1) -> np.ndarray:
    """The preview's images as one (H, W, C) uint8 picture: a row per class, white between images."""
    if preview.images is None:
        raise ValueError("a preview without images (the dataset is not on this machine)")
    per_class = max(int(np.sum(preview.labels == c)) for c in range(preview.num_classes))
    cell = preview.size + pad
    out = np.full((preview.num_classes * cell + pad, per_class * cell + pad, preview.images.shape[-1]), 255, np.uint8)
    for c in range(preview.num_classes):
        for k, i in enumerate(np.flatnonzero(preview.labels == c)):
            out[pad + c * cell:(c + 1) * cell, pad + k * cell:(k + 1) * cell] = preview.images[i]
    return out
