"""User datasets: ``folder:PATH`` (a folder or .zip of ``class_name/*.png|jpg``) and ``idx:PATH``.

A folder may hold ``train/`` and ``test/`` (each with class folders); otherwise a stratified 20%
hold-out (seed 0) is the test split. Zips are read in memory and never extracted, and entries that
point outside the archive are refused. Unreadable files (and corrupt zip entries) are skipped and
named in the notes; a class none of whose files can be read is an error naming it.

Hostile input cannot exhaust the machine: a zip entry's declared size is checked before it is read
(zipfile never inflates past it), every image's header is read before any pixel is decoded (sides and
the total pixel count are bounded from headers alone), and images are decoded one at a time straight
to the target size. Each limit has an environment variable that raises it (:data:`LIMIT_ENV`).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataUnavailable
from ..registry import DatasetSpec, register_dataset
from ..settings import env
from .formats import read_idx, split_holdout

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Limits:
    """What reading one user dataset may cost. The server's operator (or a CLI user) raises one with
    its environment variable, which every refusal names."""
    max_files: int = 100_000
    max_total_bytes: int = 2 * 2 ** 30  # all files, uncompressed (as a zip's directory declares them)
    max_entry_bytes: int = 64 * 2 ** 20  # one file, uncompressed: a zip bomb is one huge entry
    max_side: int = 4096  # pixels; larger images are skipped
    max_pixels: int = 2 ** 28  # all images together, from their headers, before any is decoded

    @classmethod
    def from_env(cls, environ=None) -> "Limits":
        """The limits, each raised (or lowered) by its variable (:data:`LIMIT_ENV`)."""
        try:
            return cls(**{name: env(var, environ) for name, var in LIMIT_ENV.items()})
        except ConfigError as e:  # a bad variable is the operator's setting: the same one line, as data trouble
            raise DataUnavailable(e.problem, e.fix) from None


LIMIT_ENV = {"max_files": "PDD_MAX_FILES", "max_total_bytes": "PDD_MAX_BYTES", "max_entry_bytes": "PDD_MAX_FILE_BYTES",
             "max_side": "PDD_MAX_SIDE", "max_pixels": "PDD_MAX_PIXELS"}


def over_limit(problem: str, name: str, value: str) -> DataUnavailable:
    """The refusal for a limit: what is over it, and the two fixes (less data, or a raised limit)."""
    return DataUnavailable(f"{problem}, over the limit of {value}",
                           f"use fewer or smaller images, or raise the limit: set {LIMIT_ENV[name]} in the environment "
                           f"of the CLI or the studio's server")


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


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)  # corrupt or unsupported entries
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError)


@dataclass
class Header:
    entry: Entry
    label: str
    size: tuple[int, int]
    mode: str


def read_header(e: Entry, limits: Limits) -> Header:
    """The image's size and mode from its header alone: no pixel is decoded here."""
    with Image.open(io.BytesIO(e.read())) as img:
        if max(img.size) > limits.max_side:
            raise ValueError(f"{img.size[0]}x{img.size[1]} px is over the {limits.max_side} px limit ({LIMIT_ENV['max_side']})")
        return Header(e, e.parts[-2], img.size, img.mode)


def decode_to(h: Header, size: int, colour: bool) -> np.ndarray:
    """One image decoded straight to ``size`` (JPEG decodes at a reduced scale first)."""
    with Image.open(io.BytesIO(h.entry.read())) as img:
        img.draft("RGB" if colour else "L", (size, size))
        return as_array(img, size, colour)


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


def is_image(e: Entry) -> bool:
    """An image file inside a class folder: what a dataset is made of."""
    return len(e.parts) >= 2 and Path(e.parts[-1]).suffix.lower() in IMAGE_EXT


def headers_of(items: list[Entry], limits: Limits, notes: list[str]) -> list[Header]:
    """Pass 1 over a split: the headers of its readable images; everything else becomes a note."""
    out = []
    for e in items:
        where = "/".join(e.parts)
        if len(e.parts) < 2:
            notes.append(f"skipped {where}: not inside a class folder")
        elif Path(e.parts[-1]).suffix.lower() not in IMAGE_EXT:
            notes.append(f"skipped {where}: not an image file")
        else:
            try:
                out.append(read_header(e, limits))
            except ZIP_ERRORS as err:
                notes.append(f"skipped {where}: corrupt zip entry ({str(err)[:80]})")
            except IMAGE_ERRORS as err:
                notes.append(f"skipped {where}: unreadable ({str(err)[:80]})")
    return out


def check_sizes(path: Path, entries: list[Entry], limits: Limits) -> None:
    """Refuse before reading anything: too many files, too many bytes, one file too large."""
    if len(entries) > limits.max_files:
        raise over_limit(f"{path} has {len(entries)} files", "max_files", str(limits.max_files))
    total = sum(e.size for e in entries)
    if total > limits.max_total_bytes:
        raise over_limit(f"{path} holds {total / 2**30:.1f} GiB", "max_total_bytes", f"{limits.max_total_bytes / 2**30:.1f} GiB")
    big = max(entries, key=lambda e: e.size)
    if big.size > limits.max_entry_bytes:
        raise over_limit(f"'{'/'.join(big.parts)}' is {big.size / 2**20:.0f} MiB uncompressed", "max_entry_bytes",
                         f"{limits.max_entry_bytes / 2**20:.0f} MiB per file")


def unreadable_class(entries: list[Entry], headers: list[Header], notes: list[str]) -> Optional[DataUnavailable]:
    """A class folder with image files of which none could be read: an error that names it (a class
    that silently vanished would change the task)."""
    named = {e.parts[-2] for e in entries if is_image(e)}
    for c in sorted(named - {h.label for h in headers}):
        why = next((n for n in notes if f"{c}/" in n), "")
        return DataUnavailable(f"class '{c}' has no readable images" + (f" ({why})" if why else ""),
                               f"replace or remove the files in the folder '{c}'")
    return None


def load_folder(path: Path, image_size: Optional[int], limits: Limits) -> tuple:
    entries = list_entries(path)
    if not entries:
        raise DataUnavailable(f"{path} contains no files", "add one sub-folder of images per class")
    check_sizes(path, entries, limits)
    notes: list[str] = []
    layout = split_layout(entries)
    splits = {split: headers_of(items, limits, notes) for split, items in layout.items()}
    train = splits["train"]
    if not train:
        raise DataUnavailable(f"{path} has no readable images in class folders",
                              "use the layout class_name/image.png" + (f" ({notes[0]})" if notes else ""))
    if (err := unreadable_class(layout["train"], train, notes)) is not None:
        raise err
    classes = sorted({h.label for h in train})
    if len(classes) < 2:
        raise DataUnavailable(f"{path} has a single class ('{classes[0]}')", "add a folder of images for at least one more class")
    every = train + splits.get("test", [])
    pixels = sum(h.size[0] * h.size[1] for h in every)
    if pixels > limits.max_pixels:
        raise over_limit(f"the {len(every)} images hold {pixels / 1e6:.0f} million pixels", "max_pixels",
                         f"{limits.max_pixels / 1e6:.0f} million")
    sizes = Counter(h.size for h in every)
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
    colour = any(h.mode not in ("L", "1", "I", "I;16", "LA") for h in train)
    index = {c: i for i, c in enumerate(classes)}

    def arrays(headers: list[Header]) -> tuple[np.ndarray, np.ndarray]:
        """Pass 2: decode one image at a time to the target size (a file may still fail here)."""
        xs, ys = [], []
        for h in headers:
            if h.label not in index:
                continue
            try:
                xs.append(decode_to(h, image_size, colour))
                ys.append(index[h.label])
            except ZIP_ERRORS + IMAGE_ERRORS as err:
                notes.append(f"skipped {'/'.join(h.entry.parts)}: unreadable ({str(err)[:80]})")
        shape = (0, 3 if colour else 1, image_size, image_size)
        return (np.stack(xs) if xs else np.zeros(shape, np.float32)), np.array(ys, dtype=np.int64)

    x, y = arrays(train)
    if splits.get("test"):
        xt, yt = arrays(splits["test"])
        source = f"{path} (train/ and test/ folders)"
    else:
        tr, te = split_holdout(y, 0.2, seed=0)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
        source = f"{path} (stratified 80/20 split, seed 0)"
    if notes:
        source += f"; {len(notes)} {SKIPPED}: " + "; ".join(notes[:5]) + (" ..." if len(notes) > 5 else "")
    return x, y, xt, yt, classes, source


SKIPPED = "file(s) skipped"


def skipped_files(source: str) -> Optional[str]:
    """The "N file(s) skipped: ..." part of a dataset's source line, if any: what a run warns about."""
    head, sep, tail = source.partition(f" {SKIPPED}: ")
    return f"{head.rsplit('; ', 1)[-1]} {SKIPPED}: {tail}" if sep else None


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
                      limits: Optional[Limits] = None) -> tuple:
    """``limits``: the environment's (:meth:`Limits.from_env`) unless given."""
    limits = limits if limits is not None else Limits.from_env()
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
