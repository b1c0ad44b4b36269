"""Format-level helpers shared by the built-in and the user's datasets: IDX files and stratified
index splits (pure numpy; no dataset knowledge)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataUnavailable


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about ``n`` examples with the class proportions of ``y`` (sorted, deterministic)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, round(n * len(idx) / len(y)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def split_holdout(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split of indices, the same for the same ``seed``."""
    test = stratified_subset(y, int(round(len(y) * test_fraction)), seed)
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (a built-in set's; a user's goes through
    :func:`pdd_engine.datasets.userdata.read_idx_file`, which bounds it first)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), str(path))


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """An unsigned-byte IDX file's bytes as an array, or a one-line error naming the file."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4 or len(raw) < 4 + 4 * raw[3]:
        raise DataUnavailable(f"{name} is not an unsigned-byte IDX file",
                              "point to the original *-idx3-ubyte / *-idx1-ubyte files")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataUnavailable(f"{name} is truncated ({data.size} bytes, header says {int(np.prod(dims))})",
                              "re-download or re-extract the file")
    return data.reshape(dims)
