"""Finished runs, engine side: the stage loop saves a run's record in the cache's run book
(:mod:`pdd_engine.book`), and the CLI (``pdd runs``) lists, shows, deletes, exports and compares them.

A record holds a run's config and per-stage accuracies; the stages themselves stay in the store under their
own keys, shared with every run that shares them, so deleting a record frees no stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .book import PREFIX, RunBook, RunRecord
from .cache import Store
from .config import DistillConfig
from .errors import PDDError
from .export import export_bundle
from .keys import KEY_VERSION, Keys
from .version import __version__


def book(store: Store) -> RunBook:
    """The run book beside ``store``'s cache; records and owner marks an older engine kept inside the
    cache itself (where its size limit could evict them) move into it the first time."""
    fresh = not (Path(store.directory) / "runs.sqlite").exists()
    out = RunBook(store.directory)
    if fresh:
        for key in [k for k in store.keys(PREFIX)]:
            hit = store.get(key)
            if hit is not None and "accuracies" in hit[1]:
                out.save(key, {k: v for k, v in hit[1].items() if k != "_key"})
            store.delete(key)
        for key in [k for k in store.keys("owner:")]:  # owner:<owner hash>:<run key>; the hash moves as it is
            _, owner_hash, run_key = key.split(":", 2)
            with out._db() as db:
                db.execute("INSERT OR IGNORE INTO owners VALUES (?, ?)", (owner_hash, run_key))
            store.delete(key)
    return out


def save(store: Store, keys: Keys, dataset: dict[str, Any], accuracies: list[dict[str, Any]],
         warnings: list[str] = ()) -> RunRecord:
    """Write the record of a finished run (the engine's last step), with what its stages warned of."""
    record = {"config": keys.cfg.to_dict(), "dataset": dataset, "accuracies": accuracies, "finished": time.time(),
              "version": __version__, "keys": KEY_VERSION, "warnings": list(warnings)}
    return book(store).save(keys.run, record)


def current(record: RunRecord) -> bool:
    """Whether this engine's keys address the record's stages (an older engine's runs show results only)."""
    return record.keys == KEY_VERSION


def get(store: Store, ref: str) -> RunRecord:
    """The run whose key or id starts with ``ref`` (``run:`` prefix optional)."""
    found = book(store).find(ref)
    if len(found) != 1:
        problem = f"no run matches '{ref}'" if not found else f"'{ref}' matches {len(found)} runs"
        raise PDDError(problem, "give a run id from `pdd runs list` (a unique prefix is enough)")
    return found[0]


def delete(store: Store, refs: list[str]) -> int:
    """Delete run records (not their stages, which other runs may share); returns how many went."""
    b = book(store)
    return sum(b.delete(get(store, ref).key) for ref in refs)


def export(store: Store, ref: str, path: str | Path, flag: str = "--out") -> Path:
    """Write the bundle of a finished run."""
    rec = get(store, ref)
    if not current(rec):
        raise PDDError(f"run {rec.id} was made by engine {rec.version}, whose stages this version cannot address",
                       f"run it again with the same settings (see `pdd runs show {rec.id}`)")
    return export_bundle(DistillConfig.from_dict(rec.config), path, store, flag=flag)
