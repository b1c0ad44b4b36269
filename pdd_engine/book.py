"""The run book: finished runs' records, who may see each, and whose each upload is, in a small SQLite file
beside the cache.

The stage cache is bounded (``PDD_CACHE_GB``) and evicts what was least recently used; a run's record and
its owners must outlive that, so they live here, apart, where nothing evicts them (a record whose stages
were evicted still lists, and exporting it says to run it again). Pure standard library: the studio's web
process reads it without the engine.

On a shared server, runs belong to the visitors that made them: an *owner mark* per (owner, run) says who
may list, export and delete it. Identical configs still share the cached computation, never the listing.
Marks hold a hash of the owner's identity, never the identity itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import CacheError

FILE = "runs.sqlite"
ID_LEN = 12
PREFIX = "run:"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, record TEXT NOT NULL, finished REAL NOT NULL);
CREATE TABLE IF NOT EXISTS owners (owner TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (owner, key));
CREATE TABLE IF NOT EXISTS uploads (owner TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS server (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


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
    """A finished run, as plain data: its config (flat values under ``params`` as ``to_dict`` gives them),
    the dataset's facts, each stage's accuracies, when it finished and which engine and keys made it."""

    key: str
    config: dict[str, Any]
    dataset: dict[str, Any]
    stages: tuple[StageResult, ...]
    finished: float
    version: str
    keys: str  # the key version its stages were stored under
    warnings: tuple[str, ...] = ()  # what its stages warned of ("stage 1: ..."); none in older records

    @property
    def id(self) -> str:
        return self.key[len(PREFIX):len(PREFIX) + ID_LEN]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    @property
    def label(self) -> str:
        c = self.config
        return f"{self.id} {shown_dataset(c['dataset'])} {c['method']} P={c['stages']} IPC={c['ipc']}"

    @property
    def file_stem(self) -> str:
        c = self.config
        return f"pdd_{c['dataset'].split(':')[0]}_{c['method']}_P{c['stages']}_ipc{c['ipc']}_{self.id}"

    def flat(self) -> dict[str, Any]:
        """The config under front-end names: shared fields, then the method's own."""
        return {**{k: v for k, v in self.config.items() if k != "params"}, **(self.config.get("params") or {})}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "config": self.config, "dataset": self.dataset,
                "stages": [asdict(s) for s in self.stages], "finished": self.finished, "version": self.version,
                "keys": self.keys, "warnings": list(self.warnings)}

    @classmethod
    def of(cls, key: str, d: dict[str, Any]) -> Optional["RunRecord"]:
        try:
            return cls(key, dict(d["config"]), dict(d.get("dataset", {})),
                       tuple(StageResult.from_dict(a) for a in d["accuracies"]), float(d.get("finished", 0.0)),
                       str(d.get("version", "?")), str(d.get("keys", "")), tuple(map(str, d.get("warnings", ()))))
        except (KeyError, TypeError, ValueError):
            return None  # written by an engine whose records this one cannot read


def shown_dataset(name: str) -> str:
    """A dataset as people are shown it: a user's data by its file name, never a path on the server."""
    scheme, sep, where = name.partition(":")
    return f"{scheme}:{Path(where).name}" if sep and scheme in ("folder", "idx") else name


def owner_id(owner: str) -> str:
    """The book's name for an owner (a hash: reading the book does not reveal identities or tokens)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:24]


class RunBook:
    """Run records, owner marks and upload marks in ``<directory>/runs.sqlite``. Every call opens its own
    connection, so threads and processes (engines, the web server, the CLI) share one book safely."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"cannot open the run book {self.path} ({e})",
                             "use a writable folder with --cache-dir (app: PDD_CACHE_DIR), or fix its permissions") from None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:  # one transaction: committed, or rolled back on an error
                yield db
        except sqlite3.OperationalError as e:
            raise CacheError(f"the run book {self.path} cannot be written ({e})",
                             "free disk space there, or use another folder with --cache-dir (app: PDD_CACHE_DIR)") from None
        finally:
            db.close()

    # -- records ------------------------------------------------------------------------------
    def save(self, key: str, record: dict[str, Any]) -> RunRecord:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (key, json.dumps(record), record["finished"]))
        return RunRecord.of(key, record)

    def record(self, key: str) -> Optional[RunRecord]:
        with self._db() as db:
            row = db.execute("SELECT record FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else RunRecord.of(key, json.loads(row[0]))

    def records(self, owner: Optional[str] = None) -> list[RunRecord]:
        """Every readable record, newest first; with ``owner``, only the runs that owner claimed."""
        with self._db() as db:
            rows = (db.execute("SELECT key, record FROM runs ORDER BY finished DESC").fetchall() if owner is None else
                    db.execute("SELECT runs.key, record FROM runs JOIN owners ON owners.key = runs.key "
                               "WHERE owner = ? ORDER BY finished DESC", (owner_id(owner),)).fetchall())
        return [r for r in (RunRecord.of(k, json.loads(v)) for k, v in rows) if r is not None]

    def find(self, ref: str) -> list[RunRecord]:
        """The records whose key or id starts with ``ref`` (``run:`` optional)."""
        ref = ref.removeprefix(PREFIX)
        if not ref:
            return []
        return [r for r in self.records() if r.key[len(PREFIX):].startswith(ref)]

    def delete(self, key: str) -> bool:
        with self._db() as db:
            db.execute("DELETE FROM owners WHERE key = ?", (key,))
            return db.execute("DELETE FROM runs WHERE key = ?", (key,)).rowcount > 0

    # -- owners -------------------------------------------------------------------------------
    def claim(self, key: str, owner: str) -> None:
        """Mark ``key`` as ``owner``'s run (a run served from the cache is claimed too)."""
        if owner:
            with self._db() as db:
                db.execute("INSERT OR IGNORE INTO owners VALUES (?, ?)", (owner_id(owner), key))

    def owns(self, key: str, owner: str) -> bool:
        if not owner:
            return False
        with self._db() as db:
            return db.execute("SELECT 1 FROM owners WHERE owner = ? AND key = ?", (owner_id(owner), key)).fetchone() \
                is not None

    def release(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s claim on ``key``; the record goes too once nobody claims it."""
        with self._db() as db:
            if not owner or db.execute("DELETE FROM owners WHERE owner = ? AND key = ?",
                                       (owner_id(owner), key)).rowcount == 0:
                return False
            if db.execute("SELECT 1 FROM owners WHERE key = ?", (key,)).fetchone() is None:
                db.execute("DELETE FROM runs WHERE key = ?", (key,))
        return True

    # -- uploads ------------------------------------------------------------------------------
    def claim_upload(self, name: str, owner: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO uploads VALUES (?, ?)", (owner_id(owner), name))

    def owns_upload(self, name: str, owner: str) -> bool:
        if not owner:
            return False
        with self._db() as db:
            return db.execute("SELECT 1 FROM uploads WHERE owner = ? AND name = ?", (owner_id(owner), name)).fetchone() \
                is not None

    # -- the server's secret ------------------------------------------------------------------
    def folder_of(self, owner: str) -> str:
        """An owner's own folder name (exports): keyed with this book's secret, so it cannot be derived from
        a known identity (a Hugging Face user name) by anyone without the server's files."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO server VALUES ('secret', ?)", (secrets.token_hex(32),))
            secret = db.execute("SELECT value FROM server WHERE name = 'secret'").fetchone()[0]
        return hmac.new(secret.encode(), owner.encode(), hashlib.sha256).hexdigest()[:32]


def compare_table(records: list[RunRecord]) -> str:
    """Markdown: one row per run and stage, with its three comparisons beside it."""
    pm = lambda m, s: "–" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    rows = ["| run | dataset | method | P | stage | IPC | accuracy % | base method alone % | base alone, same epochs % "
            "| random subset % |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        c = r.config
        for s in r.stages:
            rows.append(f"| {r.id} | {shown_dataset(c['dataset'])} | {c['method']} | {c['stages']} | {s.stage} | "
                        f"{s.ipc} | {pm(s.mean, s.std)} | {pm(s.base_mean, s.base_std)} | "
                        f"{pm(s.base_epochs_mean, s.base_epochs_std)} | {pm(s.random_mean, s.random_std)} |")
    return "\n".join(rows)


def run_warnings(records: list[RunRecord]) -> list[str]:
    """"<run id> stage i: ..." for what each run's stages warned of (an unstable MTT matching), in order."""
    return [f"{r.id} {w}" for r in records for w in r.warnings]


def config_differences(records: list[RunRecord]) -> str:
    """Markdown: the settings in which the runs differ, one row per setting, a column per run
    (what to read first when two curves disagree); one line when they differ in none."""
    flats = [r.flat() for r in records]
    every = dict.fromkeys(n for f in flats for n in f)  # shared settings, then each method's own
    names = [n for n in every if n not in ("data_root", "cache_dir") and len({repr(f.get(n)) for f in flats}) > 1]
    if not names:
        return "The selected runs have the same settings." if len(records) > 1 else ""
    shown = lambda n, v: shown_dataset(v) if n == "dataset" else v  # noqa: E731
    rows = ["| setting | " + " | ".join(r.id for r in records) + " |", "| --- |" + " --- |" * len(records)]
    rows += [f"| {n} | " + " | ".join("–" if f.get(n) is None else str(shown(n, f.get(n))) for f in flats) + " |"
             for n in names]
    return "\n".join(rows)
