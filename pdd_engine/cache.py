"""The on-disk store: every finished stage, evaluation and expert trajectory, by content hash.

Values are raw bytes in the safetensors format (tensors + a JSON string in its metadata), never
pickles, so a cache written by one version can be inspected, and never executes code when read.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import diskcache
import safetensors.torch
import torch

from .errors import CacheError
from .settings import env


def default_cache_dir() -> Path:
    return env("PDD_CACHE_DIR")


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A safetensors blob: the tensors, and ``meta`` as a JSON string in its metadata."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return safetensors.torch.save(tensors, metadata={"json": json.dumps(meta, sort_keys=True)})


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a safetensors blob (its header: 8 bytes of length, then JSON)."""
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    return safetensors.torch.load(blob), meta


class BytesOnlyDisk(diskcache.Disk):
    """diskcache's serialiser, restricted to what the store writes: str keys and bytes (or int) values.

    diskcache unpickles any row stored in pickle mode, and anything that can write the cache folder
    could plant one; a pickled value reads as ``Refused`` and a pickled key as a non-str key, so
    nothing in the folder can run code when read.
    """

    def get(self, key, raw):
        return super().get(key, raw) if raw else Refused("a pickled key")

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            return Refused("a pickled value")
        return super().fetch(mode, filename, value, read)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not isinstance(value, (bytes, int)):
            raise TypeError(f"the store holds bytes only, not {type(value).__name__}")
        return super().store(value, read, key)


class Refused:
    def __init__(self, what: str):
        self.what = what


# What the store's layout and records mean. A cache written with a higher format is refused (an
# older engine could misread it); a lower one is upgraded in place (its keys simply never match).
FORMAT = 2
FORMAT_KEY = "_store:format"
Check = Callable[[dict[str, Any], dict[str, Any]], Optional[str]]  # (tensors, meta) -> why unusable


class Store:
    """A diskcache-backed map ``key -> (tensors, meta)``; ``size_limit_gb`` bounds its disk use.

    Reads never crash and never return a value written for another key: an unreadable, foreign or
    (per the caller's ``check``) malformed entry is dropped with a one-line notice and reads as a miss,
    so the caller recomputes it. Only that entry is dropped.
    """

    def __init__(self, directory: Optional[str | Path] = None, size_limit_gb: Optional[float] = None,
                 notice: Optional[Callable[[str], None]] = None):
        size_limit_gb = env("PDD_CACHE_GB") if size_limit_gb is None else size_limit_gb
        if not size_limit_gb > 0:
            raise CacheError(f"a cache of {size_limit_gb} GiB holds nothing", "set PDD_CACHE_GB to a positive size")
        self.directory = Path(directory) if directory else default_cache_dir()
        self.notice = notice or (lambda msg: print(msg, file=sys.stderr))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=int(size_limit_gb * 2 ** 30),
                                          eviction_policy="least-recently-used", disk=BytesOnlyDisk)
            found = self._cache.get(FORMAT_KEY)
            found = found if isinstance(found, int) else None
            if found is None or found < FORMAT:
                self._cache.set(FORMAT_KEY, FORMAT)
        except (OSError, sqlite3.Error) as e:
            raise self._error(e, "open") from None
        if found is not None and found > FORMAT:
            raise CacheError(f"the cache {self.directory} was written by a newer PDD Studio (cache format {found}, "
                             f"this version reads {FORMAT})",
                             "upgrade PDD Studio, or use another folder with --cache-dir (app: PDD_CACHE_DIR)")
        self.writes = 0

    def get(self, key: str, check: Optional[Check] = None) -> Optional[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """The entry under ``key``, or None if there is none or it cannot be trusted (then it is dropped)."""
        try:
            blob = self._cache.get(key)
        except (OSError, sqlite3.Error) as e:
            return self._drop(key, f"unreadable ({type(e).__name__})")
        if blob is None:
            return None
        if not isinstance(blob, bytes):
            return self._drop(key, "is not stored as bytes (refused unread)")
        try:
            tensors, meta = unpack(blob)
        except Exception as e:  # truncated or not safetensors at all: any parse error means the same
            return self._drop(key, f"unreadable ({type(e).__name__})")
        if meta.get("_key", key) != key:
            return self._drop(key, "written for another key")
        why = check(tensors, meta) if check is not None else None
        if why:
            return self._drop(key, why)
        return tensors, meta

    def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self._cache.set(key, pack(tensors, {**meta, "_key": key}))
        except (OSError, sqlite3.Error) as e:
            raise self._error(e, "write") from None
        self.writes += 1

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix))

    def close(self) -> None:
        self._cache.close()

    def _drop(self, key: str, why: str) -> None:
        self._cache.delete(key)
        self.notice(f"cache entry {key[:24]}… {why}: dropped it, recomputing")
        return None

    def _error(self, e: Exception, doing: str) -> CacheError:
        full = getattr(e, "errno", None) == errno.ENOSPC or "full" in str(e).lower()
        if full:
            return CacheError(f"the disk holding the cache {self.directory} is full",
                              "free space there, lower PDD_CACHE_GB, or use another folder with --cache-dir "
                              "(app: PDD_CACHE_DIR); finished stages stay cached")
        return CacheError(f"cannot {doing} the cache {self.directory} ({e})",
                          "use a writable folder with --cache-dir (app: PDD_CACHE_DIR), or fix its permissions")
