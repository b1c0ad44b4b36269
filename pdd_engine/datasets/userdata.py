"""User datasets: ``folder:PATH`` (a folder or .zip of ``class_name/*.png|jpg``) and ``idx:PATH``.

A folder may hold ``train/`` and ``test/`` (each with class folders); otherwise a stratified 20% hold-out
(seed 0) is the test split. Zips are read in memory and never extracted. Unreadable files (and corrupt zip
entries) are skipped and named in the notes; a class none of whose files can be read is an error naming it.

Hostile input cannot exhaust the machine (:mod:`pdd_engine.untrusted`): a zip's entries are bounded by their
declared sizes before any is read; every image's header is read before any pixel is decoded (sides and the
total pixel count are bounded from headers alone); the decoded size (images x side² x channels x 4 bytes) is
bounded before decoding, and the images are decoded one at a time, straight to the target size, into one
array allocated once. A preview decodes only the images it shows.
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataUnavailable
from ..registry import DatasetSpec, register_dataset
from ..untrusted import ZIP_ERRORS, EncryptedEntry, Limits, SafeZip, over_limit, regular, regular_files, size_text
from .formats import parse_idx, split_holdout

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError,
                Image.DecompressionBombWarning)
MIN_SIDE = 4  # pixels: a smaller image carries nothing a ConvNet can use
HEADER_BYTES = 64 * 1024  # where an image's header is looked for first (PNG, GIF, BMP, WebP, most JPEGs)
GREY = ("L", "1", "I", "I;16", "LA")
LAYOUT = "give a folder (or .zip) with one sub-folder of images per class (class_name/image.png)"
SKIPPED = "file(s) skipped"


@dataclass
class Entry:
    parts: tuple[str, ...]  # path components below the root
    size: int
    stream: Callable[[], BinaryIO]  # the file, read as far as a reader goes (a header)

    def read(self) -> bytes:
        """The whole file (decoding)."""
        with self.stream() as f:
            return f.read()


def list_entries(path: Path, limits: Limits) -> list[Entry]:
    """The files of a folder or a zip, bounded (count, bytes) before any is read."""
    if path.is_dir():
        files = []
        for p in regular_files(path):
            if p.name.startswith("."):
                continue
            files.append(Entry(p.relative_to(path).parts, p.stat().st_size, lambda p=p: open(p, "rb")))
            if len(files) > limits.files:
                raise over_limit(f"{path.name} has more than {limits.files:,} files", "files", f"{limits.files:,}",
                                 DataUnavailable, "use fewer files")
        for e in files:
            if e.size > limits.entry_bytes:
                raise over_limit(f"'{'/'.join(e.parts)}' is {size_text(e.size)}", "entry_bytes",
                                 f"{size_text(limits.entry_bytes)} per file", DataUnavailable, "use smaller files")
        total = sum(e.size for e in files)
        if total > limits.total_bytes:
            raise over_limit(f"{path.name} holds {size_text(total)}", "total_bytes", size_text(limits.total_bytes),
                             DataUnavailable, "use less data")
        return files
    z = SafeZip(path, limits, DataUnavailable, LAYOUT)
    out = []
    for m in z.members.values():
        parts = PurePosixPath(m.name).parts
        if not parts[-1].startswith(".") and "__MACOSX" not in parts:
            out.append(Entry(parts, m.size, lambda info=m.info: z.entry_stream(info)))  # a corrupt entry: skipped, noted
    return out


@dataclass
class Header:
    entry: Entry
    label: str
    size: tuple[int, int]
    mode: str

    @property
    def where(self) -> str:
        return "/".join(self.entry.parts)


def read_header(e: Entry, limits: Limits) -> Header:
    """The image's size and mode from its header alone: no pixel is decoded here, and a file is read only
    as far as its first ``HEADER_BYTES`` where its header lies there (an upload of images padded to megabytes
    was inflated whole, on every read of it). A header further in (a JPEG after a large EXIF block, a TIFF's
    directory at its end) is read from the whole file, as before: never by seeking in a zip entry, which
    inflates it again from its start at each seek back."""
    with e.stream() as f:
        head = f.read(HEADER_BYTES)
    try:
        return header_of(e, head, limits)
    except IMAGE_ERRORS:
        if len(head) < HEADER_BYTES:
            raise  # that was the whole file
    return header_of(e, e.read(), limits)


def header_of(e: Entry, data: bytes, limits: Limits) -> Header:
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if max(w, h) > limits.side:
            raise ValueError(f"{w}x{h} px is over the {limits.side} px limit (PDD_MAX_SIDE)")
        if min(w, h) < MIN_SIDE:
            raise DataUnavailable(f"'{'/'.join(e.parts)}' is {w}x{h} px: images need at least {MIN_SIDE} px per side",
                                  "remove it or replace it with a larger image")
        return Header(e, e.parts[-2], (w, h), img.mode)


def decode_into(out: np.ndarray, h: Header) -> None:
    """One image decoded straight into ``out`` (C, size, size): upright by its EXIF orientation, JPEGs at a
    reduced scale first."""
    size, colour = out.shape[-1], out.shape[0] == 3
    with Image.open(io.BytesIO(h.entry.read())) as img:
        img.draft("RGB" if colour else "L", (size, size))
        img = ImageOps.exif_transpose(img).convert("RGB" if colour else "L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0
        out[:] = a.transpose(2, 0, 1) if colour else a[None]


def reason(err: Exception) -> str:
    """Why a file could not be read, in a few words (never a Python object's address)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image format it can read"
    return str(err)[:80] or type(err).__name__


def split_layout(entries: list[Entry]) -> dict[str, list[Entry]]:
    """{'train': [...], 'test': [...]} if the root has train/ and test/, else {'train': all}."""
    tops = {e.parts[0].lower() for e in entries if len(e.parts) > 2}
    if {"train", "test"} <= tops:
        return {s: [Entry(e.parts[1:], e.size, e.stream) for e in entries if e.parts[0].lower() == s and len(e.parts) >= 3]
                for s in ("train", "test")}
    # a single wrapping folder (zip of a folder) is looked through
    if entries and len({e.parts[0] for e in entries}) == 1 and all(len(e.parts) >= 3 for e in entries):
        return split_layout([Entry(e.parts[1:], e.size, e.stream) for e in entries])
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
            except DataUnavailable:
                raise
            except ZIP_ERRORS as err:
                notes.append(f"skipped {where}: " + ("encrypted zip entry (password-protected zips are not read)"
                                                      if isinstance(err, EncryptedEntry) else f"corrupt zip entry ({str(err)[:80]})"))
            except IMAGE_ERRORS as err:
                notes.append(f"skipped {where}: unreadable ({reason(err)})")
    return out


def vanished_class(named: set[str], labels: list[str], notes: list[str]) -> Optional[DataUnavailable]:
    """The first class of ``named`` with no image among ``labels`` (all of its files failed), named with why."""
    for c in sorted(named - set(labels)):
        why = next((n for n in notes if f"{c}/" in n), "")
        return DataUnavailable(f"class '{c}' has no readable images" + (f" ({why})" if why else ""),
                               f"replace or remove the files in the folder '{c}'")
    return None


def class_problem(name: str, named: set[str], labels: list[str], notes: list[str],
                  holdout: bool) -> Optional[DataUnavailable]:
    """What makes a folder's classes unusable, as an error that names the class: a class folder with image
    files of which none could be read (a class that silently vanished would change the task), a single
    class, or (``holdout``: no test/ folder) a class with fewer than 2 images. Asked of the headers before
    decoding and of the images decoded, since a file can pass its header and fail its pixels."""
    if (err := vanished_class(named, labels, notes)) is not None:
        return err
    count = Counter(labels)
    if len(count) < 2:
        return DataUnavailable(f"{name} has a single class ('{next(iter(count))}')",
                               "add a folder of images for at least one more class")
    few = sorted(c for c in count if count[c] < 2) if holdout else []
    if few:  # the 80/20 hold-out needs an image to train on and one to test on, per class
        return DataUnavailable(f"class '{few[0]}' has {count[few[0]]} image: a class needs at least 2 (one to train "
                               "on, one to test on)", f"add images to '{few[0]}', or give train/ and test/ folders")
    return None


@dataclass
class Scan:
    """A folder dataset read as far as its headers: what it holds, before any pixel is decoded."""

    path: Path
    splits: dict[str, list[Header]]  # "train" (and "test" when the folder has both)
    classes: list[str]
    size: int  # the side every image is decoded to
    colour: bool
    notes: list[str]

    @property
    def channels(self) -> int:
        return 3 if self.colour else 1

    def decode(self, headers: list[Header], notes: Optional[list[str]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Pass 2: ``headers``' images decoded into one array allocated once (a file that fails here is
        skipped and noted)."""
        index = {c: i for i, c in enumerate(self.classes)}
        headers = [h for h in headers if h.label in index]
        x = np.empty((len(headers), self.channels, self.size, self.size), np.float32)
        y = np.empty(len(headers), np.int64)
        kept = 0
        for h in headers:
            try:
                decode_into(x[kept], h)
            except ZIP_ERRORS + IMAGE_ERRORS as err:
                (self.notes if notes is None else notes).append(f"skipped {h.where}: unreadable ({reason(err)})")
                continue
            y[kept] = index[h.label]
            kept += 1
        return x[:kept], y[:kept]


def scan_folder(path: Path, image_size: Optional[int], limits: Limits) -> Scan:
    """Read a folder dataset's headers and check everything that can be checked before decoding it: its
    layout, classes, sizes and what it would take in memory decoded."""
    entries = list_entries(path, limits)
    if not entries:
        raise DataUnavailable(f"{path.name} contains no files", "add one sub-folder of images per class")
    notes: list[str] = []
    layout = split_layout(entries)
    splits = {split: headers_of(items, limits, notes) for split, items in layout.items()}
    train = splits["train"]
    if not train:
        raise DataUnavailable(f"{path.name} has no readable images in class folders",
                              "use the layout class_name/image.png" + (f" ({notes[0]})" if notes else ""))
    named = {e.parts[-2] for e in layout["train"] if is_image(e)}
    if (err := class_problem(path.name, named, [h.label for h in train], notes, "test" not in splits)) is not None:
        raise err
    classes = sorted({h.label for h in train})
    every = train + splits.get("test", [])
    pixels = sum(h.size[0] * h.size[1] for h in every)
    if pixels > limits.pixels:
        raise over_limit(f"the {len(every):,} images hold {pixels / 1e6:,.0f} million pixels", "pixels",
                         f"{limits.pixels / 1e6:,.0f} million", DataUnavailable, "use fewer or smaller images")
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
    colour = any(h.mode not in GREY for h in train)
    decoded = len(every) * image_size ** 2 * (3 if colour else 1) * 4
    if decoded > limits.decoded_bytes:
        raise over_limit(f"{len(every):,} images at {image_size}x{image_size} px take {size_text(decoded)} decoded",
                         "decoded_bytes", size_text(limits.decoded_bytes), DataUnavailable,
                         "use fewer images or a smaller image_size")
    return Scan(path, splits, classes, image_size, colour, notes)


def load_folder(path: Path, image_size: Optional[int], limits: Limits) -> tuple:
    scan = scan_folder(path, image_size, limits)
    x, y = scan.decode(scan.splits["train"])
    err = class_problem(path.name, set(scan.classes), [scan.classes[i] for i in y], scan.notes, not scan.splits.get("test"))
    if err is not None:
        raise err
    if scan.splits.get("test"):
        xt, yt = scan.decode(scan.splits["test"])
        source = f"{path.name} (train/ and test/ folders)"
    else:
        tr, te = split_holdout(y, 0.2, seed=0)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
        source = f"{path.name} (stratified 80/20 split, seed 0)"
    if scan.notes:
        source += f"; {len(scan.notes)} {SKIPPED}: " + "; ".join(scan.notes[:5]) + (" ..." if len(scan.notes) > 5 else "")
    return x, y, xt, yt, scan.classes, source


def skipped_files(source: str) -> Optional[str]:
    """The "N file(s) skipped: ..." part of a dataset's source line, if any: what a run warns about."""
    head, sep, tail = source.partition(f" {SKIPPED}: ")
    return f"{head.rsplit('; ', 1)[-1]} {SKIPPED}: {tail}" if sep else None


def read_idx_file(p: Path, limits: Limits) -> np.ndarray:
    """An IDX file (optionally gzipped) of a user's folder, read within the per-file limit."""
    regular(p, DataUnavailable, "point to the original *-idx3-ubyte / *-idx1-ubyte files")
    with (gzip.open if p.suffix == ".gz" else open)(p, "rb") as f:
        raw = f.read(limits.entry_bytes + 1)
    if len(raw) > limits.entry_bytes:
        raise over_limit(f"{p.name} is over {size_text(limits.entry_bytes)}", "entry_bytes",
                         f"{size_text(limits.entry_bytes)} per file", DataUnavailable, "use a smaller file")
    return parse_idx(raw, p.name)


def load_idx_dir(path: Path, limits: Limits) -> tuple:
    """A folder with ``*train*images*``/``*train*labels*`` IDX files, optionally ``*t10k*``/``*test*``."""
    files = [p for p in regular_files(path) if p.parent == path and "idx" in p.name]
    pick = lambda *words: next((p for p in files if all(w in p.name for w in words)), None)  # noqa: E731
    xtr, ytr = pick("train", "images"), pick("train", "labels")
    if not (xtr and ytr):
        raise DataUnavailable(f"no train-images/train-labels IDX files in {path.name}",
                              "name them like train-images-idx3-ubyte and train-labels-idx1-ubyte")
    xte = pick("t10k", "images") or pick("test", "images")
    yte = pick("t10k", "labels") or pick("test", "labels")
    raw = {k: read_idx_file(p, limits) for k, p in (("x", xtr), ("y", ytr), ("xt", xte), ("yt", yte)) if p}
    decoded = sum(int(np.prod(raw[k].shape)) * 4 for k in ("x", "xt") if k in raw)
    if decoded > limits.decoded_bytes:
        raise over_limit(f"the IDX images take {size_text(decoded)} decoded", "decoded_bytes",
                         size_text(limits.decoded_bytes), DataUnavailable, "use fewer images")
    unit = lambda a: (a.astype(np.float32) / 255.0)[:, None] if a.ndim == 3 else (a.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)  # noqa: E731
    x, y = unit(raw["x"]), raw["y"].astype(np.int64)
    if "xt" in raw and "yt" in raw:
        xt, yt = unit(raw["xt"]), raw["yt"].astype(np.int64)
    else:
        tr, te = split_holdout(y, 0.2, seed=0)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
    if len(x) != len(y) or len(xt) != len(yt) or x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise DataUnavailable(f"the IDX files in {path.name} do not match (images {x.shape}, labels {y.shape})",
                              "give the images and labels files of one dataset, square images")
    classes = [str(c) for c in range(int(max(y.max(), yt.max())) + 1)]
    return x, y, xt, yt, classes, f"IDX files in {path.name}"


def user_path(name: str) -> tuple[str, Path]:
    kind, _, where = name.partition(":")
    path = Path(where).expanduser()
    if not path.exists():
        raise DataUnavailable(f"{path.name or path} does not exist", f"give an existing folder or .zip after '{kind}:'")
    if kind == "idx" and not path.is_dir():
        raise DataUnavailable(f"{path.name} is not a folder", "give the folder that holds the IDX files after 'idx:'")
    if kind == "folder" and not path.is_dir():
        regular(path, DataUnavailable, "give a folder, or a .zip file, after 'folder:'")
    return kind, path


def load_user_dataset(name: str, data_root: Optional[str] = None, image_size: Optional[int] = None,
                      limits: Optional[Limits] = None) -> tuple:
    """``limits``: the environment's (:meth:`Limits.from_env`) unless given."""
    limits = limits if limits is not None else Limits.from_env(error=DataUnavailable)
    kind, path = user_path(name)
    if kind == "idx":
        return load_idx_dir(path, limits)
    return load_folder(path, image_size, limits)


def sample_user_dataset(name: str, image_size: Optional[int], per_class: int, seed: int,
                        limits: Optional[Limits] = None, shown_classes: Optional[int] = None) -> dict:
    """What a preview shows of a folder dataset, decoding only those images: facts from the headers and
    ``per_class`` images of each class (drawn with ``seed``) as (N, C, H, W) [0, 1] floats."""
    limits = limits if limits is not None else Limits.from_env(error=DataUnavailable)
    kind, path = user_path(name)
    if kind == "idx":
        x, y, xt, _, classes, source = load_idx_dir(path, limits)
        rng = np.random.default_rng(seed)
        pick = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                               for c in range(len(classes))[:shown_classes]])
        return {"x": x[pick], "y": y[pick], "classes": classes, "train": np.bincount(y, minlength=len(classes)),
                "test": len(xt), "source": source, "channels": x.shape[1]}
    scan = scan_folder(path, image_size, limits)
    train = scan.splits["train"]
    labels = np.array([scan.classes.index(h.label) for h in train])
    if scan.splits.get("test"):
        counts, test = np.bincount(labels, minlength=len(scan.classes)), len(scan.splits["test"])
    else:  # as the run will split it
        tr, te = split_holdout(labels, 0.2, seed=0)
        counts, test = np.bincount(labels[tr], minlength=len(scan.classes)), len(te)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                           for c in range(len(scan.classes))[:shown_classes]])
    x, y = scan.decode([train[i] for i in pick])
    whole = {c for i, c in enumerate(scan.classes[:shown_classes]) if np.sum(labels == i) <= per_class}  # read in full
    if (err := vanished_class(whole, [scan.classes[i] for i in y], scan.notes)) is not None:
        raise err
    source = f"{path.name}" + (f"; {len(scan.notes)} {SKIPPED}: " + "; ".join(scan.notes[:5]) if scan.notes else "")
    return {"x": x, "y": y, "classes": scan.classes, "train": counts, "test": test, "source": source,
            "channels": scan.channels}


register_dataset(DatasetSpec("folder:", "your images: a folder or .zip of class_name/*.png",
                             lambda root, size, name: load_user_dataset(name, root, size), lambda root: True,
                             "your own data (its licence is yours to check)"))
register_dataset(DatasetSpec("idx:", "your IDX files (MNIST layout)", lambda root, size, name: load_user_dataset(name, root, size),
                             lambda root: True, "your own data (its licence is yours to check)"))
