"""The on-disk store: every finished stage, evaluation and expert trajectory, by content hash.

Values are raw bytes in the safetensors format (tensors + a JSON string in its metadata), never
pickles, so a cache written by one version can be inspected, and never executes code when read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import diskcache
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

DEFAULT_SIZE_LIMIT_GB = float(os.environ.get("PDD_CACHE_GB", "4"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("PDD_CACHE_DIR", Path.home() / ".cache" / "pdd_studio" / "cache"))


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return st_save(tensors, metadata={"json": json.dumps(meta, sort_keys=True)})


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = st_load(blob)
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    return tensors, meta


class Store:
    """A diskcache-backed map ``key -> (tensors, meta)``; ``size_limit_gb`` bounds its disk use."""

    def __init__(self, directory: Optional[str | Path] = None, size_limit_gb: Optional[float] = None):
        size_limit_gb = size_limit_gb or DEFAULT_SIZE_LIMIT_GB
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), size_limit=int(size_limit_gb * 2 ** 30),
                                      eviction_policy="least-recently-used")
        self.reads = 0
        self.writes = 0

    def get(self, key: str) -> Optional[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        blob = self._cache.get(key)
        if blob is None:
            return None
        self.reads += 1
        return unpack(blob)

    def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._cache.set(key, pack(tensors, meta))
        self.writes += 1

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix))

    def close(self) -> None:
        self._cache.close()
