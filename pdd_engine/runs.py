"""Finished runs as typed records: saved by the engine, listed, read, deleted, exported and compared
by the CLI (``python -m pdd_engine runs``) and the studio's Runs tab alike.

A record holds a run's config and per-stage accuracies; the stages themselves stay in the store
under their own keys, shared with every run that shares them, so deleting a record frees no stage.

On a shared server, runs belong to the browsers that made them: an *owner mark* per (owner, run)
says who may list, export and delete it (:func:`claim`, :func:`list_runs` with ``owner``,
:func:`release`). Identical configs still share the cached computation, never the listing. Marks
hold a hash of the owner's token, never the token.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .cache import Store
from .config import DistillConfig
from .errors import ConfigError, PDDError
from .keys import KEY_VERSION, Keys

PREFIX = "run:"
OWNER_PREFIX = "owner:"
ID_LEN = 12


@dataclass(frozen=True)
class StageResult:
    """Accuracies after one stage (fractions), each the mean/std over the evaluation networks."""

    stage: int
    ipc: int  # cumulative images per class
    mean: float
    std: float
    random_mean: float
    random_std: float
    base_mean: Optional[float] = None  # the base method alone (P = 1) at this IPC, where compared
    base_std: Optional[float] = None
    base_epochs_mean: Optional[float] = None  # the base's P = 1 images trained as many epochs as PDD's curriculum
    base_epochs_std: Optional[float] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageResult":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RunRecord:
    key: str
    config: DistillConfig
    dataset: dict[str, Any]
    stages: tuple[StageResult, ...]
    finished: float
    version: str
    current: bool  # its stages are addressable by this engine's keys (False: results only)

    @property
    def id(self) -> str:
        return self.key[len(PREFIX):len(PREFIX) + ID_LEN]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    @property
    def label(self) -> str:
        c = self.config
        return f"{self.id} {c.dataset} {c.method} P={c.stages} IPC={c.ipc}"

    @property
    def file_stem(self) -> str:
        c = self.config
        return f"pdd_{c.dataset.split(':')[0]}_{c.method}_P{c.stages}_ipc{c.ipc}_{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "config": self.config.to_dict(), "dataset": self.dataset,
                "stages": [asdict(s) for s in self.stages], "finished": self.finished, "version": self.version,
                "current": self.current}


def save(store: Store, keys: Keys, dataset: dict[str, Any], accuracies: list[dict[str, Any]]) -> RunRecord:
    """Write the record of a finished run (the engine's last step)."""
    meta = {"config": keys.cfg.to_dict(), "dataset": dataset, "accuracies": accuracies, "finished": time.time(),
            "version": __version__, "keys": KEY_VERSION}
    store.put(keys.run, {}, meta)
    return _record(keys.run, meta)


def _record(key: str, meta: dict[str, Any]) -> Optional[RunRecord]:
    try:
        cfg = DistillConfig.from_dict(meta["config"])
        stages = tuple(StageResult.from_dict(a) for a in meta["accuracies"])
    except (ConfigError, KeyError, TypeError):
        return None  # written by an engine whose config this one cannot read
    return RunRecord(key, cfg, meta.get("dataset", {}), stages, meta.get("finished", 0.0), meta.get("version", "?"),
                     meta.get("keys") == KEY_VERSION)


def read(store: Store, key: str) -> Optional[RunRecord]:
    """The record under exactly ``key``, or None if there is none or it cannot be read."""
    hit = store.get(key)
    return None if hit is None else _record(key, hit[1])


def list_runs(store: Store, owner: Optional[str] = None) -> list[RunRecord]:
    """Every readable run record, newest first; with ``owner``, only the runs that owner claimed."""
    keys = list(store.keys(PREFIX)) if owner is None else sorted(owned(store, owner))
    return sorted(filter(None, (read(store, key) for key in keys)), key=lambda r: -r.finished)


def owner_id(token: str) -> str:
    """The store's name for an owner token (a hash: reading the cache does not reveal tokens)."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def claim(store: Store, run_key: str, token: str) -> None:
    """Mark ``run_key`` as ``token``'s run (a run served from the cache is claimed too)."""
    if token:
        store.put(f"{OWNER_PREFIX}{owner_id(token)}:{run_key}", {}, {"kind": "owner"})


def owned(store: Store, token: str) -> set[str]:
    """The run keys ``token`` has claimed; an empty token owns nothing."""
    if not token:
        return set()
    prefix = f"{OWNER_PREFIX}{owner_id(token)}:"
    return {k[len(prefix):] for k in store.keys(prefix)}


def release(store: Store, run_key: str, token: str) -> bool:
    """Drop ``token``'s claim on ``run_key``; the record goes too once nobody claims it."""
    if not store.delete(f"{OWNER_PREFIX}{owner_id(token)}:{run_key}"):
        return False
    if not any(k.endswith(":" + run_key) for k in store.keys(OWNER_PREFIX)):
        store.delete(run_key)
    return True


def get(store: Store, ref: str) -> RunRecord:
    """The run whose key or id starts with ``ref`` (``run:`` prefix optional); reads only the matches."""
    ref = ref.removeprefix(PREFIX)
    keys = [k for k in list(store.keys(PREFIX)) if k[len(PREFIX):].startswith(ref)] if ref else []
    found = list(filter(None, (read(store, k) for k in keys)))
    if len(found) != 1:
        problem = f"no run matches '{ref}'" if not found else f"'{ref}' matches {len(found)} runs"
        raise PDDError(problem, "give a run id from `python -m pdd_engine runs list` (a unique prefix is enough)")
    return found[0]


def delete(store: Store, refs: list[str]) -> int:
    """Delete run records (not their stages, which other runs may share); returns how many went."""
    return sum(store.delete(get(store, ref).key) for ref in refs)


def export(store: Store, ref: str, path: str | Path) -> Path:
    """Write the bundle of a finished run."""
    from .export import export_bundle  # torch-heavy; listing runs does not need it
    rec = get(store, ref)
    if not rec.current:
        raise PDDError(f"run {rec.id} was made by engine {rec.version}, whose stages this version cannot address",
                       "run it again with the same settings (see `python -m pdd_engine runs show " + rec.id + "`)")
    return export_bundle(rec.config, path, store)


def compare_table(records: list[RunRecord]) -> str:
    """Markdown: one row per run and stage, with the random subset and base method beside it."""
    pm = lambda m, s: "–" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    rows = ["| run | dataset | method | P | stage | IPC | accuracy % | base method alone % | base alone, same epochs % "
            "| random subset % |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        for s in r.stages:
            rows.append(f"| {r.id} | {r.config.dataset} | {r.config.method} | {r.config.stages} | {s.stage} | {s.ipc} | "
                        f"{pm(s.mean, s.std)} | {pm(s.base_mean, s.base_std)} | {pm(s.base_epochs_mean, s.base_epochs_std)} | "
                        f"{pm(s.random_mean, s.random_std)} |")
    return "\n".join(rows)


def config_differences(records: list[RunRecord]) -> str:
    """Markdown: the settings in which the runs differ, one row per setting, a column per run
    (what to read first when two curves disagree); one line when they differ in none."""
    flats = [r.config.flat() for r in records]
    every = dict.fromkeys(n for f in flats for n in f)  # shared settings, then each method's own
    names = [n for n in every if n not in ("data_root", "cache_dir") and len({repr(f.get(n)) for f in flats}) > 1]
    if not names:
        return "The selected runs have the same settings." if len(records) > 1 else ""
    rows = ["| setting | " + " | ".join(r.id for r in records) + " |", "| --- |" + " --- |" * len(records)]
    rows += [f"| {n} | " + " | ".join("–" if f.get(n) is None else str(f.get(n)) for f in flats) + " |" for n in names]
    return "\n".join(rows)
