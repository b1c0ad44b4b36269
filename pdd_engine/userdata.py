"""User datasets: ``folder:PATH`` (a folder or .zip of ``class_name/*.png|jpg``) and ``idx:PATH``.

A folder may hold ``train/`` and ``test/`` (each with class folders); otherwise a stratified 20%
hold-out (seed 0) is the test split. Zips are read in memory and never extracted, and entries that
point outside the archive are refused. Unreadable files are skipped and named in the notes.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .formats import read_idx, split_holdout
from .datasets import DatasetSpec, register_dataset
from .errors import DataUnavailable

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Limits:
    max_files: int = 100_000
    max_total_bytes: int = 2 * 2 ** 30
    max_side: int = 4096  # pixels; larger files are refused (decompression bombs)


@dataclass
class Entry:
    parts: tuple[str, ...]  # path components below the root
    size: int
    read: Callable[[], bytes]


def list_entries(path: Path) -> list[Entry]:
    if path.is_dir():
        return [Entry(p.relative_to(path).parts, p.stat().st_size, p.read_bytes)
                for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if zipfile.is_zipfile(path):
        z = zipfile.ZipFile(path)
        out = []
        for info in z.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
                raise DataUnavailable(f"zip entry '{info.filename}' points outside the archive",
                                      "re-create the zip with relative paths (class_name/image.png)")
            if not info.is_dir() and not name.name.startswith(".") and "__MACOSX" not in name.parts:
                out.append(Entry(name.parts, info.file_size, lambda i=info: z.read(i)))
        return out
    raise DataUnavailable(f"{path} is neither a folder nor a zip file",
                          "give a folder (or .zip) with one sub-folder of images per class")


def decode(blob: bytes, name: str, limits: Limits) -> Image.Image:
    img = Image.open(io.BytesIO(blob))
    if max(img.size) > limits.max_side:
        raise ValueError(f"{img.size[0]}x{img.size[1]} px is over the {limits.max_side} px limit")
    img.load()
    return img


def split_layout(entries: list[Entry]) -> dict[str, list[Entry]]:
    """{'train': [...], 'test': [...]} if the root has train/ and test/, else {'train': all}."""
    tops = {e.parts[0].lower() for e in entries if len(e.parts) > 2}
    if {"train", "test"} <= tops:
        return {s: [Entry(e.parts[1:], e.size, e.read) for e in entries if e.parts[0].lower() == s and len(e.parts) >= 3]
                for s in ("train", "test")}
    # a single wrapping folder (zip of a folder) is looked through
    if len({e.parts[0] for e in entries}) == 1 and all(len(e.parts) >= 3 for e in entries):
        return split_layout([Entry(e.parts[1:], e.size, e.read) for e in entries])
    return {"train": entries}


def load_folder(path: Path, image_size: Optional[int], limits: Limits) -> tuple:
    entries = list_entries(path)
    if not entries:
        raise DataUnavailable(f"{path} contains no files", "add one sub-folder of images per class")
    if len(entries) > limits.max_files:
        raise DataUnavailable(f"{path} has {len(entries)} files, over the limit of {limits.max_files}",
                              "use a subset of the images")
    total = sum(e.size for e in entries)
    if total > limits.max_total_bytes:
        raise DataUnavailable(f"{path} holds {total / 2**30:.1f} GiB, over the limit of {limits.max_total_bytes / 2**30:.1f} GiB",
                              "use a subset of the images or smaller files")
    notes: list[str] = []
    splits = {}
    for split, items in split_layout(entries).items():
        images, labels = [], []
        for e in items:
            where = "/".join(e.parts)
            if len(e.parts) < 2:
                notes.append(f"skipped {where}: not inside a class folder")
                continue
            if Path(e.parts[-1]).suffix.lower() not in IMAGE_EXT:
                notes.append(f"skipped {where}: not an image file")
                continue
            try:
                images.append(decode(e.read(), where, limits))
                labels.append(e.parts[-2])
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
                notes.append(f"skipped {where}: unreadable ({str(err)[:80]})")
        splits[split] = (images, labels)
    images, labels = splits["train"]
    if not images:
        raise DataUnavailable(f"{path} has no readable images in class folders",
                              "use the layout class_name/image.png" + (f" ({notes[0]})" if notes else ""))
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataUnavailable(f"{path} has a single class ('{classes[0]}')", "add a folder of images for at least one more class")
    sizes = Counter(im.size for im in images + splits.get("test", ([], []))[0])
    if image_size is None:
        if len(sizes) > 1:
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
            raise DataUnavailable(f"the images have mixed sizes: {common}",
                                  "set image_size to resize them all, e.g. 32 (CLI --image-size; studio: Advanced, Image size)")
        (w, h), = sizes
        if w != h or w > 128:
            raise DataUnavailable(f"the images are {w}x{h}; square images of at most 128 px are supported as they are",
                                  "set image_size to resize them, e.g. 32 (CLI --image-size; studio: Advanced, Image size)")
        image_size = w
    colour = any(im.mode not in ("L", "1", "I", "I;16", "LA") for im in images)
    to_array = lambda ims: np.stack([as_array(im, image_size, colour) for im in ims])  # noqa: E731
    index = {c: i for i, c in enumerate(classes)}
    x, y = to_array(images), np.array([index[c] for c in labels], dtype=np.int64)
    if "test" in splits and splits["test"][0]:
        timgs, tlabels = splits["test"]
        keep = [i for i, c in enumerate(tlabels) if c in index]
        xt, yt = to_array([timgs[i] for i in keep]), np.array([index[tlabels[i]] for i in keep], dtype=np.int64)
        source = f"{path} (train/ and test/ folders)"
    else:
        tr, te = split_holdout(y, 0.2, seed=0)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
        source = f"{path} (stratified 80/20 split, seed 0)"
    if notes:
        source += f"; {len(notes)} file(s) skipped: " + "; ".join(notes[:5]) + (" ..." if len(notes) > 5 else "")
    return x, y, xt, yt, classes, source


def as_array(im: Image.Image, size: int, colour: bool) -> np.ndarray:
    im = im.convert("RGB" if colour else "L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a.transpose(2, 0, 1) if colour else a[None]


def load_idx_dir(path: Path) -> tuple:
    """A folder with ``*train*images*``/``*train*labels*`` IDX files, optionally ``*t10k*``/``*test*``."""
    files = [p for p in path.iterdir() if p.is_file() and "idx" in p.name]
    pick = lambda *words: next((p for p in files if all(w in p.name for w in words)), None)  # noqa: E731
    xtr, ytr = pick("train", "images"), pick("train", "labels")
    if not (xtr and ytr):
        raise DataUnavailable(f"no train-images/train-labels IDX files in {path}",
                              "name them like train-images-idx3-ubyte and train-labels-idx1-ubyte")
    x, y = read_idx(xtr).astype(np.float32) / 255.0, read_idx(ytr).astype(np.int64)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    xte = pick("t10k", "images") or pick("test", "images")
    yte = pick("t10k", "labels") or pick("test", "labels")
    if xte and yte:
        xt, yt = read_idx(xte).astype(np.float32) / 255.0, read_idx(yte).astype(np.int64)
        xt = xt[:, None] if xt.ndim == 3 else xt.transpose(0, 3, 1, 2)
    else:
        tr, te = split_holdout(y, 0.2, seed=0)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
    classes = [str(c) for c in range(int(max(y.max(), yt.max())) + 1)]
    return x, y, xt, yt, classes, f"IDX files in {path}"


def load_user_dataset(name: str, data_root: Optional[str] = None, image_size: Optional[int] = None,
                      limits: Limits = Limits()) -> tuple:
    kind, _, where = name.partition(":")
    path = Path(where).expanduser()
    if not path.exists():
        raise DataUnavailable(f"{path} does not exist", f"give an existing folder or .zip after '{kind}:'")
    if kind == "idx":
        return load_idx_dir(path)
    return load_folder(path, image_size, limits)


register_dataset(DatasetSpec("folder:", "your images: a folder or .zip of class_name/*.png",
                             lambda root, size, name: load_user_dataset(name, root, size), lambda root: True,
                             "your own data (its licence is yours to check)"))
register_dataset(DatasetSpec("idx:", "your IDX files (MNIST layout)", lambda root, size, name: load_user_dataset(name, root, size),
                             lambda root: True, "your own data (its licence is yours to check)"))
