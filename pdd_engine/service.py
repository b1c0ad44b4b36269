"""The one door between a front end and the engine: runs, their owners and limits, and the processes
that do the work.

A front end (the studio) holds a :class:`Service` and nothing else of the engine. Every operation that
touches a run, a run's files or a visitor's upload takes the caller's identity (``owner``) and refuses
what is not the caller's, here and only here; every count a visitor can ask for is checked against the
server's maxima, and every run's estimate against ``PDD_MAX_RUN_HOURS``, before any work. Refusals are
one-line :class:`~pdd_engine.errors.PDDError` messages that name the limit and its variable.

The work happens in child processes, so this module (the web process) never imports torch: one engine
process per run (events stream back through a queue), a long-lived *helper* (validation, the estimate's
timing, previews, exports, bundle manifests) and an *evaluator* (bundle re-evaluations, minutes each). A
child that dies is replaced and its call retried once; Stop asks the engine to stop, then terminates it,
then kills it. The functions the children run live in :mod:`pdd_engine.worker`, called by name.

    service = Service(cache_dir)
    run_id = service.submit({"dataset": "digits", "method": "dm", "stages": 2, "ipc": 10}, owner="visitor-token")
    view = service.watch(run_id, "visitor-token")   # state, position, the run's events
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing as mp
import os
import queue
import re
import secrets
import shutil
import signal
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from . import events as E
from .book import RunBook, RunRecord, compare_table, config_differences, run_warnings, shown_dataset
from .errors import PDDError
from .manifest import evaluation_table, manifest_arch, stage_warnings
from .results import read_rows, views
from .settings import env

WORKER = "pdd_engine.worker"
STOP_GRACE_S = 10.0  # a stopped engine's time to finish its iteration before it is terminated
KILL_GRACE_S = 3.0  # then its time to exit before it is killed (a stopped, SIGSTOPped or hung process)
QUICK_S = 1.0  # a control change waits at most this long for the helper's answer
# settings the server decides, never a visitor: where things are, how much memory a step may take (it
# overrides the memory safeguards), and where units run (PDD_EXECUTOR)
SERVER_ONLY = ("data_root", "cache_dir", "max_memory_gb", "executor")
MAX_ARCHITECTURES = 4  # in one bundle evaluation (each runs the bundle's whole curriculum)
ABSOLUTE = re.compile(r"(?<![\w.])/(?:[^/\s'\"()<>,;:]+/)+([^/\s'\"()<>,;:]*)/?")  # /any/path/name -> name
OBJECT = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in (RunState.DONE, RunState.FAILED, RunState.STOPPED)


def engine_threads(requested: int, cores: int, concurrent: int, side_lane: bool = True) -> int:
    """Torch threads for each engine process: ``requested`` when set, else the cores less one, shared by the
    runs allowed at once. The spare core serves the web server and, on a local studio, the visitor's browser.
    But a lone run on 2 or more cores gets at least two, where it has a side lane (progressive.SideLane): its
    two lanes of one thread each wait for no other thread, and on 2 cores the default run went from 67-70 s
    click to Done with one engine thread to 38-45 s with two (``bench.app_latency --only run``; docs/scaling.md)."""
    if requested:
        return requested
    threads = max(1, (cores - 1) // max(1, concurrent))
    return max(threads, 2) if side_lane and concurrent <= 1 and cores >= 2 else threads


def call_by_name(module: str, name: str, *args: Any) -> Any:
    """What a child process runs: ``module.name(*args)``, imported there (a web process that named the
    function by reference would have to import the module, and torch with it)."""
    return getattr(importlib.import_module(module), name)(*args)


def watch_parent(parent: int) -> None:
    """A child process exits as soon as its parent (the server) is gone, even after kill -9."""
    call_by_name(WORKER, "exit_with_parent", parent)


# -- the children ------------------------------------------------------------------------------
class Child:
    """One long-lived child process (a process pool of one) for calls into :mod:`pdd_engine.worker`. A
    child that died (killed for memory, say) is replaced and the call tried once more; a second death is
    one line for the caller. A child that hangs (stopped, or holding one call longer than ``stuck_s``) is
    killed and replaced too, so one bad call cannot stall every visitor. Answers can be remembered by key
    (the estimate's timings, previews)."""

    def __init__(self, name: str, ctx, keep: int = 64, stuck_s: float = 600.0, limit: str = ""):
        """``limit``: what a call past ``stuck_s`` was over, for its one-line error (None: an internal hang)."""
        self.name, self.ctx, self.keep, self.stuck_s, self.limit = name, ctx, keep, stuck_s, limit
        self.lock = threading.RLock()
        self.pool: Optional[ProcessPoolExecutor] = None
        self.answers: OrderedDict[Any, Future] = OrderedDict()
        self.started: dict[Future, float] = {}  # calls in flight, and when each was submitted
        self.killed = ""  # why the child was killed last (a call past its limit): the caller's one line

    def _pool(self) -> ProcessPoolExecutor:
        with self.lock:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=watch_parent,
                                                initargs=(os.getpid(),))
            return self.pool

    def _renew(self, broken: Optional[ProcessPoolExecutor]) -> None:
        with self.lock:
            if broken is not None and self.pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self.pool = None
            for key in [k for k, f in self.answers.items() if f.done() and isinstance(f.exception(), BrokenProcessPool)]:
                del self.answers[key]

    def submit(self, fn: str, *args: Any) -> Future:
        pool = self._pool()
        try:
            future = pool.submit(call_by_name, WORKER, fn, *args)
        except (BrokenProcessPool, RuntimeError):  # died between calls: a new process takes this call
            self._renew(pool)
            future = self._pool().submit(call_by_name, WORKER, fn, *args)
        self.started[future] = time.time()
        future.add_done_callback(lambda f: self.started.pop(f, None))
        return future

    def _died(self, pool: Optional[ProcessPoolExecutor], attempt: int) -> None:
        """After BrokenProcessPool: renew the child; raise the one line if this call is not tried again."""
        self._renew(pool)
        if self.killed:
            why, self.killed = self.killed, ""
            raise PDDError(*why.split(". Fix: ", 1))
        if attempt == 2:
            raise PDDError(f"the server's {self.name} process died twice while working on this",
                           "try again in a moment; if it keeps failing, the server is short of memory")

    def call(self, fn: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """``worker.fn(*args)`` in the child, retried once in a new child if the first one died; raises
        TimeoutError past ``timeout`` (the call goes on)."""
        for attempt in (1, 2):
            pool = self._pool()
            try:
                return self.submit(fn, *args).result(timeout=timeout)
            except BrokenProcessPool:
                self._died(pool, attempt)
            except TimeoutError:
                self.check()
                raise

    def ask(self, key: Any, fn: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """:meth:`call`, answered once per ``key`` (the newest ``keep`` answers are kept); raises
        TimeoutError if it is not done within ``timeout`` (it goes on, and a later ask finds it)."""
        for attempt in (1, 2):
            pool = self._pool()
            with self.lock:
                future = self.answers.get(key)
                if future is None:
                    future = self.answers[key] = self.submit(fn, *args)
                    while len(self.answers) > self.keep:
                        self.answers.popitem(last=False)
            try:
                return future.result(timeout=timeout)
            except BrokenProcessPool:
                self._died(pool, attempt)
            except TimeoutError:
                self.check()
                raise
            except PDDError:
                raise  # the inputs' own answer (an upload that cannot be read): remembered like any other
            except Exception:
                with self.lock:  # a crash is not remembered: the next ask tries again
                    if self.answers.get(key) is future:
                        del self.answers[key]
                raise

    def forget(self, which: Callable[[Any], bool]) -> None:
        """Drop the remembered answers whose key ``which`` picks (their inputs changed: an upload kept again)."""
        with self.lock:
            for key in [k for k in self.answers if which(k)]:
                del self.answers[key]

    def check(self) -> None:
        """Kill a child that is stopped or a zombie, or that holds one call past ``stuck_s``: its pool breaks,
        and its callers retry in a new child (or, past the limit, get its one line)."""
        pids = self.pids()
        over = [t for t in list(self.started.values()) if time.time() - t > self.stuck_s]
        stopped = [pid for pid in pids if process_state(pid) in ("T", "t", "Z")]
        if not pids or not (over or stopped):
            return
        if over and self.limit:
            self.killed = self.limit
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def pids(self) -> list[int]:
        pool = self.pool
        return list(getattr(pool, "_processes", None) or {}) if pool is not None else []

    def shutdown(self) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None


class StillReading(PDDError):
    """An upload whose preview has not finished: its settings cannot be checked yet (not invalid)."""


def process_state(pid: int) -> str:
    """A process's state letter from /proc (R running, S sleeping, T stopped, Z zombie; "" if unknown)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """A run the service holds: its settings, owner and state, and the events its engine sent."""

    id: str
    config: dict
    owner: str
    created: float = field(default_factory=time.time)
    state: RunState = RunState.QUEUED
    events: list = field(default_factory=list)
    process: Any = None
    thread: Optional[threading.Thread] = None
    cancel: Any = None
    queue: Any = None
    stop_requested: float = 0.0
    # when each stage started, and each (stage, phase)'s first iteration: (time, iteration), for the
    # page's per-stage timing and how long the iterations still take
    stage_started: dict = field(default_factory=dict)
    first_progress: dict = field(default_factory=dict)

    def add(self, ev: Any) -> None:
        now = time.time()
        if isinstance(ev, E.StageStarted):
            self.stage_started[ev.stage] = now
        elif isinstance(ev, E.Progress):
            self.first_progress.setdefault((ev.stage, ev.phase), (now, ev.iteration))
        self.events.append(ev)

    def timing(self, stage: int, phase: str, iteration: int, iterations: int) -> tuple[float, Optional[float]]:
        """(seconds since ``stage`` started, seconds its ``phase``'s iterations still need, or None)."""
        now = time.time()
        since = now - self.stage_started.get(stage, now)
        t0, it0 = self.first_progress.get((stage, phase), (now, iteration))
        left = (now - t0) / (iteration - it0) * (iterations - iteration) if iteration > it0 else None
        return since, left

    @property
    def stage(self) -> int:
        stages = [e.stage for e in self.events if isinstance(e, E.StageStarted)]
        return stages[-1] if stages else 0


@dataclass(frozen=True)
class RunView:
    """What a caller may see of a run: everything for its owner; progress and images only for anyone
    else who has its id (a shared ``?run=`` link), never its files, Stop, Resume or Delete."""

    id: str
    state: RunState
    position: int  # 1-based place in the queue, 0 when not waiting
    events: list
    owned: bool
    timing: Optional[tuple] = None  # (seconds into the current stage, seconds its iterations still need or None)

    @property
    def finished(self) -> bool:
        return self.state.finished


@dataclass(frozen=True)
class Check:
    """A settings check: ``ok`` with the normalised config, or the one-line ``error``."""

    ok: bool
    error: str = ""
    config: Optional[dict] = None
    ipcs: tuple = ()
    warnings: tuple = ()
    automatic: Optional[dict] = None
    estimate: Optional[str] = None  # "about 2 min and 0.9 GiB peak", or None while the network is timed
    seconds: Optional[float] = None
    pending: bool = False  # not invalid: the upload is still being read (check again once it is)


@dataclass(frozen=True)
class Limits:
    """What one visitor, and all of them together, may ask of a shared server (the CLI on one's own machine
    has none)."""

    run_hours: float  # a run's estimated time; an evaluation's actual time
    runs_per_visitor: int  # queued or running, per visitor
    queued: int = 20  # queued or running, the whole server
    run_gb: float = 0.0  # a run's estimated peak memory (0: 80 % of this machine's)
    evaluations_per_visitor: int = 1

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(env("PDD_MAX_RUN_HOURS"), env("PDD_MAX_RUNS_PER_VISITOR"), env("PDD_MAX_QUEUED"),
                   env("PDD_MAX_RUN_GB"), env("PDD_MAX_EVALUATIONS_PER_VISITOR"))

    @property
    def run_bytes(self) -> float:
        if self.run_gb:
            return self.run_gb * 2 ** 30
        try:
            return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return float("inf")


def upload_gone() -> PDDError:
    """A visitor's kept upload that housekeeping has pruned: the one line every path that finds it gone says."""
    return PDDError("your upload is no longer on this server (old uploads are removed to make room)",
                    "upload the .zip again (Dataset: upload your own)")


class Service:
    """The engine, as a front end sees it. Thread-safe; one per server."""

    def __init__(self, cache_dir: str | Path, export_dir: Optional[str | Path] = None,
                 upload_dir: Optional[str | Path] = None, data_root: Optional[str] = None, max_concurrent: int = 1,
                 threads: int = 0, stagewise: bool = False, public: bool = False, limits: Optional[Limits] = None,
                 keep_finished: int = 100, gpu_seconds: int = 120, results: Optional[str | Path] = None):
        """``export_dir``: where finished runs' bundles are written (a folder per owner); ``upload_dir``:
        where visitors' uploaded datasets are kept; ``stagewise``: run each stage as one call of
        :func:`pdd_engine.worker.stage_call` (a ZeroGPU Space lends the GPU per call) instead of an engine
        process; ``public``: every visitor may see, export and delete every run (a single-user or teaching
        server); ``keep_finished``: finished runs kept in memory for ``?run=`` links; ``results``: the benchmark's
        rows (``bench/results/quality.csv``) the Results tab shows."""
        self.cache_dir = str(cache_dir)
        self.export_dir = Path(export_dir) if export_dir else Path(cache_dir).parent / "exports"
        self.upload_dir = Path(upload_dir) if upload_dir else Path(cache_dir).parent / "uploads"
        self.data_root = data_root
        self.max_concurrent, self.public = max(1, max_concurrent), public
        self.threads = engine_threads(threads, len(os.sched_getaffinity(0)), self.max_concurrent, env("PDD_SIDE_LANE"))
        self.limits = limits or Limits.from_env()
        self.keep_finished, self.gpu_seconds = keep_finished, gpu_seconds
        self.results_csv = Path(results) if results else None
        self.book = RunBook(cache_dir)
        # The children inherit this (spawn copies the environment; OpenMP reads it when torch loads). With the
        # default spinning policy, engine threads that share the cores with the web server, a browser or a
        # second run wait for each other at every operation: many times slower than one thread. Yours wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.ctx = mp.get_context("spawn")
        self.helper = Child("helper", self.ctx)
        self.evaluator = Child("evaluator", self.ctx, keep=0, stuck_s=self.limits.run_hours * 3600, limit=(
            f"the evaluation ran past this server's maximum of {self.limits.run_hours:g} h (PDD_MAX_RUN_HOURS). Fix: "
            "choose fewer epochs, networks or architectures, or evaluate with the CLI on your own machine"))
        self._reserved: dict[str, int] = {}  # visitors' runs being checked: counted against the caps already
        self._evaluating: dict[str, int] = {}  # visitors' evaluations waiting or running
        self.stage_fn = stage_function(gpu_seconds) if stagewise else None
        self._runs: dict[str, Run] = {}
        self._waiting: list[str] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # the web framework names a temporary upload by its bytes: visitors who send the same file share its path,
        # and a page's handlers ask to keep it at once. Locks striped by path (bounded), and what each was kept as
        self._keeping = [threading.Lock() for _ in range(64)]
        self._kept_temp: dict[str, str] = {}
        self._schema: Optional[dict] = None
        threading.Thread(target=self._loop, daemon=True, name="pdd-service").start()

    # -- what there is to choose -----------------------------------------------------------------
    def schema(self) -> dict:
        """Every setting (name, label, hint, kind, bounds, server maximum, choices, owning methods, where
        it is shown), the methods, the datasets (with whether each is on this machine) and the presets:
        plain data, read once from the helper."""
        if self._schema is None:
            self._schema = self.helper.call("schema", self.data_root)
        return self._schema

    # -- checks --------------------------------------------------------------------------------
    def check(self, settings: dict, owner: str, wait: float = QUICK_S) -> Check:
        """Validate and price ``settings`` as a run of ``owner``'s: quickly (a network not timed yet is timed
        in the background, and the estimate says so). Never raises for bad settings: ``error`` says why."""
        try:
            values = self._settings(settings, owner)
            shape = self._shape(values, timeout=wait)
            out = self.helper.call("check", values, shape, False, True, timeout=max(wait, 5))
        except StillReading as e:
            return Check(False, str(e), pending=True)
        except PDDError as e:
            return Check(False, self.redact(str(e)))
        except TimeoutError:
            return Check(False, "the server is busy checking these settings. Fix: change any value in a moment")
        if out["ok"] and out["timing"] is not None:  # time that network now, in the background
            try:
                self.helper.ask(("timing", tuple(out["timing"])), "time_network", *out["timing"], timeout=0)
            except TimeoutError:
                pass
        return self._check_of(out)

    def _check_of(self, out: dict) -> Check:
        if not out["ok"]:
            return Check(False, self.redact(out["error"]))
        est = out["estimate"]
        return Check(True, "", out["config"], tuple(out["ipcs"]), tuple(out["warnings"]), out["automatic"],
                     None if est is None else est["text"], None if est is None else est["seconds"])

    def _settings(self, settings: dict, owner: str) -> dict:
        """A visitor's settings as the engine takes them: the server's folders set by the server, and a
        dataset that is a built-in one or one of this visitor's own uploads (never a path on the server)."""
        if not isinstance(settings, dict):
            raise PDDError("the settings must be one JSON object of names and values", 'send e.g. {"stages": 2, "ipc": 10}')
        values = dict(settings)
        given = [k for k in SERVER_ONLY if values.get(k) not in (None, "")]
        if given:
            raise PDDError(f"{given[0]} is the server's setting, not a visitor's", f"leave {given[0]} out")
        values.update(data_root=self.data_root, cache_dir=None)
        if values.get("dataset") is None:
            values["dataset"] = self.schema()["settings"][0]["default"]
        dataset = values["dataset"]
        if not isinstance(dataset, str) or not dataset:
            raise PDDError(f"dataset must be a dataset's name (got {dataset!r})", "choose one of the datasets offered")
        if ":" in dataset:
            scheme, _, where = dataset.partition(":")
            path = Path(where)
            stranger = PDDError(f"the dataset '{shown_dataset(dataset)}' is not one of your uploads",
                                "choose a built-in dataset, or upload your .zip (Dataset: upload your own)")
            if scheme != "folder" or path.parent != self.upload_dir or not self._owns_upload(path.name, owner):
                raise stranger
            try:
                present = path.is_file()
            except OSError:  # a name the file system cannot hold (too long): no upload of anyone's
                raise stranger from None
            if not present:
                raise upload_gone()
            values["dataset"] = f"folder:{path}"  # one spelling (no '//', '/./' or trailing '/'): one cache entry
        return values

    def uploads_in_use(self) -> frozenset[Path]:
        """The kept uploads that queued or running runs will read: housekeeping never prunes them (a run
        accepted and then left without its data would fail with the CLI's advice)."""
        with self._lock:
            live = [r.config["dataset"] for r in self._runs.values() if not r.state.finished]
        return frozenset(Path(d.partition(":")[2]).resolve() for d in live if d.startswith("folder:"))

    def _owns_upload(self, name: str, owner: str) -> bool:
        return bool(owner) and (self.public or self.book.owns_upload(name, owner))

    def _shape(self, values: dict, timeout: float) -> tuple:
        """(channels, size, classes, training images) of the settings' dataset: the registry's, else the
        preview's of the upload at the settings' image size. An upload that cannot be read raises its
        preview's one line, so the settings that name it are refused with the reason the data panel shows
        (they were once called valid while the panel said the upload was broken); one still being read is
        refused as such, never priced without its shape (a broken one was called valid meanwhile)."""
        dataset = values["dataset"]
        known = next((d["shape"] for d in self.schema()["datasets"] if d["name"] == dataset), None)
        if known:
            return tuple(known)
        first = self.helper.call("check", values, None, False, True, timeout=max(timeout, 5))
        if not first["ok"]:  # settings invalid whatever the data: said in the config's words, before any reading
            raise self.refusal(first["error"])
        try:
            p = self._preview(dataset, self._preview_size(values.get("image_size")), timeout)
        except TimeoutError:
            raise StillReading("your upload is still being read", "wait: Run is enabled once its images show in "
                                                                  "the data panel (API: try again in a moment)") from None
        return p["channels"], p["size"], p["num_classes"], p["train"]

    def _preview_size(self, value: Any) -> Optional[int]:
        """The image size a preview reads an upload at: the settings' ``image_size`` where it is one the config
        takes, else the upload's own (an invalid value is the config check's to refuse, in its words)."""
        spec = next(s for s in self.schema()["settings"] if s["name"] == "image_size")
        return value if type(value) is int and spec["minimum"] <= value <= spec["maximum"] else None

    def _preview(self, dataset: str, image_size: Optional[int], timeout: float) -> dict:
        """The helper's preview of a dataset, asked once per (dataset, image size) while remembered."""
        return self.helper.ask(("preview", dataset, self.data_root, image_size), "preview", dataset, self.data_root,
                               image_size, timeout=timeout)

    # -- uploads and previews ----------------------------------------------------------------------
    def keep_upload(self, temp_path: str, owner: str) -> str:
        """Move a visitor's uploaded dataset (the web framework's temporary file, which its file route
        serves) into the upload folder, named by content, as that visitor's: the ``dataset`` value to
        run it with. Identical uploads share the cached work, never the ownership."""
        if not owner:
            raise PDDError("no visitor to keep the upload for", "reload the page")
        src = Path(temp_path)
        if src.suffix.lower() != ".zip":
            raise PDDError(f"{src.name} is not a .zip file", "upload a .zip with one folder of images per class")
        with self._keeping[hash(str(src)) % len(self._keeping)]:
            if not src.is_file() and str(src) in self._kept_temp:
                # these bytes were kept a moment ago (this visitor's other handler, or another visitor who sent the
                # same file): the framework's path is named by them, so holding it is having sent them
                return self._claim_upload(self._kept_temp[str(src)], owner)
            try:
                with open(src, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()[:20]
                self.upload_dir.mkdir(parents=True, exist_ok=True)
                kept = self.upload_dir / f"{digest}.zip"
                if not kept.exists():
                    tmp = kept.with_name(f".{kept.name}.{secrets.token_hex(4)}")
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, kept)
            except OSError as e:
                raise PDDError(f"the upload could not be kept ({e.strerror})", "upload it again") from None
            ref = self._kept_temp[str(src)] = self._claim_upload(f"folder:{kept}", owner)
            src.unlink(missing_ok=True)  # only once it is the visitor's: a failure before leaves it to upload again
            return ref

    def _claim_upload(self, ref: str, owner: str) -> str:
        """Make the kept upload ``ref`` (``folder:<upload folder>/<hash>.zip``) also ``owner``'s, as new to the
        housekeeping that prunes the oldest uploads."""
        kept = Path(ref.partition(":")[2])
        try:
            os.utime(kept)
        except OSError:
            raise upload_gone() from None
        self.book.claim_upload(kept.name, owner)
        self.helper.forget(lambda key: key[:2] == ("preview", ref))  # read again: it may have been pruned and back
        return ref

    def preview(self, dataset: str, owner: str, timeout: float = 30.0, image_size: Any = None) -> dict:
        """A dataset's facts and real images per class (never downloads): a built-in one, or one of the
        caller's uploads, at ``image_size`` where that is a valid one (what a run of it would read).
        Raises PDDError (one line) or TimeoutError (still reading: ask again)."""
        dataset = self._settings({"dataset": dataset}, owner)["dataset"]
        with self.door():
            return self._preview(dataset, self._preview_size(image_size), timeout)

    # -- runs --------------------------------------------------------------------------------------
    def submit(self, settings: dict, owner: str) -> str:
        """Queue a run of ``settings`` (flat names; anything left out takes its default) for ``owner``; its
        id. Refused in one line, before any work, when the settings are invalid, over a server maximum, or
        estimated longer than ``PDD_MAX_RUN_HOURS``, or when the visitor already has
        ``PDD_MAX_RUNS_PER_VISITOR`` runs queued or running."""
        if not owner:
            raise PDDError("this request names no visitor", "reload the page (API clients: pass the owner token "
                                                            "the first /start returned)")
        values = self._settings(settings, owner)

        def refuse() -> None:  # runs queued or running, and starts being checked, count against the caps
            live = [r for r in self._runs.values() if not r.state.finished]
            mine = sum(r.owner == owner for r in live) + self._reserved.get(owner, 0)
            if mine >= self.limits.runs_per_visitor:
                raise PDDError(f"you already have {mine} run(s) queued or running, this server's maximum per "
                               f"visitor (PDD_MAX_RUNS_PER_VISITOR)", "wait for one to finish, or stop one")
            if len(live) + sum(self._reserved.values()) >= self.limits.queued:
                raise PDDError(f"this server already has {self.limits.queued} runs queued or running, its maximum "
                               f"(PDD_MAX_QUEUED)", "try again when some have finished")
        with self._counted(self._reserved, owner, refuse):
            config = self._checked(values)
            run = Run(secrets.token_hex(8), config, owner)
            with self._lock:  # listed before the reservation ends: never counted zero times
                self._runs[run.id] = run
                self._waiting.append(run.id)
        self._schedule()
        return run.id

    @contextmanager
    def _counted(self, counts: dict[str, int], owner: str, refuse: Callable[[], None]) -> Iterator[None]:
        """``owner`` counted in ``counts`` while the body runs, once ``refuse`` (called under the lock, before
        the count is taken) has not raised: checked and counted at once, so concurrent callers cannot slip past
        a cap together."""
        with self._lock:
            refuse()
            counts[owner] = counts.get(owner, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                counts[owner] -= 1
                if not counts[owner]:
                    del counts[owner]

    def _checked(self, values: dict) -> dict:
        """The normalised config of ``values``, or the one line that refuses it: invalid, over a server maximum,
        or estimated over the run's time or memory cap."""
        try:
            with self.door():  # an unreadable upload's line, its paths cut
                shape = self._shape(values, timeout=120)
            out = self.helper.call("check", values, shape, True, False, timeout=300)
        except TimeoutError:
            raise PDDError("the server took too long to check these settings", "try again in a moment") from None
        if not out["ok"]:
            raise self.refusal(out["error"])
        est = out["estimate"]
        if est["seconds"] > self.limits.run_hours * 3600:
            raise PDDError(f"this run is estimated at {est['time']}, over this server's maximum of "
                           f"{self.limits.run_hours:g} h per run (PDD_MAX_RUN_HOURS)",
                           "lower iterations, eval_epochs, IPC or stages, or run it with the CLI on your own machine")
        if est["peak_bytes"] > self.limits.run_bytes:
            raise PDDError(f"this run is estimated to need {est['peak_bytes'] / 2 ** 30:.1f} GiB at its peak, over this "
                           f"server's maximum of {self.limits.run_bytes / 2 ** 30:.1f} GiB (PDD_MAX_RUN_GB)",
                           "lower width, image_size, IPC or MTT's syn_steps and batch_syn, or run it with the CLI on "
                           "your own machine")
        return out["config"]

    def watch(self, run_id: str, owner: str) -> Optional[RunView]:
        """The caller's view of a run (None if there is no such run on this server)."""
        run = self._runs.get(run_id or "")
        if run is None:
            return None
        with self._lock:
            owned = self._may(run, owner)
            events = [self._shown(ev) for ev in run.events if owned or not isinstance(ev, E.Exported)]
            position = self._waiting.index(run.id) + 1 if run.id in self._waiting else 0
            state = run.state
        view = RunView(run.id, state, position, events, owned)
        last = next((e for e in reversed(events) if isinstance(e, E.Progress)), None)
        if last is not None and not state.finished:
            view = RunView(run.id, state, position, events, owned, run.timing(last.stage, last.phase, last.iteration,
                                                                                last.iterations))
        return view

    def version(self, run_id: str) -> tuple:
        """What changes when a run does (its event count, state and place in the queue): cheap to poll."""
        run = self._runs.get(run_id or "")
        if run is None:
            return ()
        with self._lock:
            return len(run.events), run.state, self._waiting.index(run.id) + 1 if run.id in self._waiting else 0

    def wait(self, run_id: str, seen: int, timeout: float) -> None:
        """Return when the run has more than ``seen`` events or has changed state, or after ``timeout``."""
        run = self._runs.get(run_id or "")
        if run is None:
            return
        with self._changed:
            self._changed.wait_for(lambda: len(run.events) != seen or run.state.finished, timeout=timeout)

    def stop(self, run_id: str, owner: str) -> str:
        run = self._runs.get(run_id or "")
        if run is None:
            return "No such run."
        if not self._may(run, owner):
            return "This run was started by another visitor; only they can stop it."
        with self._lock:
            if run.id in self._waiting:
                self._waiting.remove(run.id)
                self._finish(run, RunState.STOPPED, E.Stopped(0, "removed from the queue before it started"))
                return "Removed from the queue."
            if run.state is RunState.RUNNING:
                run.cancel.set()
                run.stop_requested = run.stop_requested or time.time()
                if run.thread is not None:
                    return "Stopping after the current stage; finished stages stay cached."
                return "Stopping after the current iteration; finished stages stay cached."
        return f"The run is already {run.state.value}."

    def resume(self, run_id: str, owner: str) -> str:
        """A new run of a finished run's settings (its finished stages come from the cache): owner only."""
        run = self._runs.get(run_id or "")
        if run is None or not self._may(run, owner):
            raise PDDError("there is no run of yours to resume", "start a run first")
        if not run.state.finished:
            raise PDDError("the run is still going", "wait for it, or stop it first")
        return self.submit(self._visitor_settings(run.config), owner)

    @staticmethod
    def _visitor_settings(config: dict) -> dict:
        """A stored config as settings a visitor could have sent (the server's folders left out)."""
        return {**{k: v for k, v in config.items() if k not in SERVER_ONLY and k != "params"}, **(config.get("params") or {})}

    # -- finished runs -----------------------------------------------------------------------------
    def runs(self, owner: str) -> list[RunRecord]:
        """The caller's finished runs, newest first (every run on a public server)."""
        if self.public:
            return self.book.records()
        return self.book.records(owner) if owner else []

    def records(self, keys: list[str], owner: str) -> list[RunRecord]:
        """The chosen runs that the caller may see (others are left out, as if they did not exist)."""
        mine = {r.key: r for r in self.runs(owner)}
        return [mine[k] for k in keys or [] if k in mine]

    def open(self, key: str, owner: str) -> str:
        """Replay one of the caller's finished runs from the cache (a run whose stages come back at once)."""
        chosen = self.records([key], owner)
        if not chosen:
            raise PDDError("that run is not one of yours (or no longer listed)", "pick one of your runs")
        return self.submit(self._visitor_settings(chosen[0].config), owner)

    def compare(self, keys: list[str], owner: str) -> tuple[list[RunRecord], str, list[str]]:
        """The chosen runs of the caller's, the settings in which they differ (markdown), and what their stages
        warned of."""
        chosen = self.records(keys, owner)
        return chosen, config_differences(chosen), run_warnings(chosen)

    def table(self, keys: list[str], owner: str) -> str:
        return compare_table(self.records(keys, owner))

    def delete(self, keys: list[str], owner: str) -> int:
        """Take the chosen runs off the caller's list (their stages stay cached for runs that share them);
        a run still running is refused."""
        chosen = self.records(keys, owner)
        with self._lock:
            active = {tuple(sorted(self._visitor_settings(r.config).items())) for r in self._runs.values()
                      if not r.state.finished}
        if any(tuple(sorted(self._visitor_settings(r.config).items())) in active for r in chosen):
            raise PDDError("a selected run is running right now and cannot be deleted", "wait until it finishes")
        if self.public:
            return sum(self.book.delete(r.key) for r in chosen)
        return sum(self.book.release(r.key, owner) for r in chosen)

    def export(self, key: str, owner: str) -> E.Exported:
        """The bundle of one of the caller's finished runs (written by the helper into the caller's folder)."""
        if not self.records([key], owner):
            return E.Exported(None, [], "that run is not one of yours (or no longer listed). Fix: pick one of your runs")
        try:
            done = self.helper.call("export_run", self.cache_dir, key, self._folder(owner), timeout=600)
        except TimeoutError:
            return E.Exported(None, [], "the export took too long. Fix: try again in a moment")
        except PDDError as e:
            return E.Exported(None, [], self.redact(str(e)))
        return replace(done, error=self.redact(done.error))

    def _folder(self, owner: str) -> str:
        return str(self.export_dir / self.book.folder_of(owner))

    # -- the benchmark's results -------------------------------------------------------------------------
    def results(self) -> list[dict]:
        """The benchmark's measured settings (bench/results/quality.csv, each setting's newest row, as the docs'
        tables), each with PDD and its three comparisons as (mean, std) in % and its smallest margin over them
        (``gain``), its settings and its setup in short: what the Results tab shows."""
        return views(read_rows(self.results_csv)) if self.results_csv else []

    # -- bundles -------------------------------------------------------------------------------------
    def bundle_path(self, upload: Optional[str], run_key: str, owner: str) -> tuple[str, Optional[str]]:
        """(bundle path, the data it was made on if that is one of the caller's uploads) for an uploaded
        bundle, or for one of the caller's runs (exported first)."""
        if upload:
            if not str(upload).lower().endswith(".zip"):
                raise PDDError(f"{Path(str(upload)).name} is not a .zip file", "upload a bundle exported by PDD Studio")
            return str(upload), None
        if not run_key:
            raise PDDError("no bundle to evaluate", "upload a bundle (.zip) or pick one of your runs")
        done = self.export(run_key, owner)
        if done.path is None:  # export's message is redacted already
            raise PDDError(*done.error.rstrip(".").split(". Fix: ", 1)) if ". Fix: " in done.error else \
                PDDError(done.error, "run it again with the same settings")
        dataset = self.records([run_key], owner)[0].config["dataset"]
        return done.path, dataset.removeprefix("folder:") if dataset.startswith("folder:") else None

    def manifest(self, path: str) -> dict:
        """A bundle's verified manifest (read by the helper; BundleError if it is none)."""
        with self.door():
            try:
                return self.helper.call("manifest", path, timeout=300)
            except TimeoutError:
                raise PDDError("reading the bundle took too long", "try again in a moment") from None

    def evaluate_bundle(self, path: str, archs: list[Optional[str]], models: Optional[int], epochs: Optional[int],
                        data: Optional[str], owner: str) -> Iterator[tuple[Optional[str], list]]:
        """Re-train fresh networks of each architecture (None: the bundle's own) on the bundle's stages, one
        architecture after another in the evaluator process: yields (architecture, per-stage accuracies). The
        protocol is checked against the server's maxima there; an evaluation that runs past PDD_MAX_RUN_HOURS is
        stopped; a visitor has at most PDD_MAX_EVALUATIONS_PER_VISITOR waiting or running."""
        if not owner:
            raise PDDError("this request names no visitor", "reload the page")
        if len(archs) > MAX_ARCHITECTURES:
            raise PDDError(f"{len(archs)} architectures in one evaluation, over this server's maximum of "
                           f"{MAX_ARCHITECTURES}", "choose fewer architectures, and evaluate again for the rest")

        def refuse() -> None:
            if self._evaluating.get(owner, 0) >= self.limits.evaluations_per_visitor:
                raise PDDError("you already have an evaluation waiting or running (PDD_MAX_EVALUATIONS_PER_VISITOR)",
                               "wait for it to finish")
            if sum(self._evaluating.values()) >= self.limits.queued:
                raise PDDError(f"this server already has {self.limits.queued} evaluations waiting or running, its "
                               "maximum (PDD_MAX_QUEUED)", "try again when some have finished")
        with self._counted(self._evaluating, owner, refuse):
            for arch in archs:
                with self.door():
                    yield arch, self.evaluator.call("evaluate", path, arch, models, epochs, self.data_root, data,
                                                    self.threads)

    @staticmethod
    def evaluation_table(manifest: dict, results: list) -> tuple[list[str], list[list[str]]]:
        return evaluation_table(manifest, results)

    @staticmethod
    def bundle_architecture(manifest: dict) -> str:
        return manifest_arch(manifest)

    @staticmethod
    def bundle_warnings(manifest: dict) -> list[str]:
        """What the run that made a bundle warned of, per stage (an unstable MTT matching)."""
        return stage_warnings(manifest)

    # -- ownership ---------------------------------------------------------------------------------
    def _may(self, run: Run, owner: str) -> bool:
        return self.public or (bool(owner) and run.owner == owner)

    def _shown(self, ev: Any) -> Any:
        """An event as a visitor sees it: the run's config without the server's folders, user data by file
        name; messages without the server's paths."""
        if isinstance(ev, E.RunStarted):
            config = {**{k: v for k, v in ev.config.items() if k not in SERVER_ONLY},
                      "dataset": shown_dataset(ev.config.get("dataset", ""))}
            return E.RunStarted(ev.run_key, config, {k: v for k, v in ev.dataset.items() if k != "source"}, ev.stages)
        if isinstance(ev, (E.Message, E.Failed, E.Stopped)):
            name = "text" if isinstance(ev, E.Message) else "message"
            return replace(ev, **{name: self.redact(getattr(ev, name))})
        return ev

    def refusal(self, line: str) -> PDDError:
        """The helper's one-line refusal ("problem. Fix: fix.") as the PDDError it was, its paths cut."""
        return PDDError(*self.redact(line).rstrip(".").split(". Fix: ", 1))

    def redact(self, text: str) -> str:
        """``text`` with every path on the server cut to its file name (a visitor's data is named by its file
        name alone, a folder never), and Python's object addresses out: the one place every message leaving
        the service passes."""
        text = ABSOLUTE.sub(lambda m: m.group(1) if "." in m.group(1) else "a folder on the server", text)
        return OBJECT.sub("", text)

    @contextmanager
    def door(self) -> Iterator[None]:
        """A PDDError raised inside leaves it with its paths cut (:meth:`redact`), as the same class."""
        try:
            yield
        except PDDError as e:
            raise type(e)(self.redact(e.problem), self.redact(e.fix)) from None

    # -- the engine processes ------------------------------------------------------------------------
    def _schedule(self) -> None:
        with self._lock:
            while self._waiting and sum(r.state is RunState.RUNNING for r in self._runs.values()) < self.max_concurrent:
                run = self._runs[self._waiting.pop(0)]
                run.state = RunState.RUNNING
                if self.stage_fn is not None:
                    run.cancel = threading.Event()
                    run.thread = threading.Thread(target=self._stagewise, args=(run,), daemon=True)
                    run.thread.start()
                    continue
                try:
                    run.queue, run.cancel = self.ctx.Queue(), self.ctx.Event()
                    run.process = self.ctx.Process(
                        target=call_by_name, daemon=True, name=f"pdd-engine-{run.id}",
                        args=(WORKER, "run_engine", run.config, self.cache_dir, run.queue, run.cancel, self.threads,
                              self._folder(run.owner), run.owner, os.getpid()))
                    run.process.start()
                except Exception as e:  # e.g. "Too many open files": this run fails, the server goes on
                    self._finish(run, RunState.FAILED, E.Failed(
                        f"the engine process could not start ({type(e).__name__}: {e}). Fix: wait for other runs to "
                        "finish and start it again.", None, traceback.format_exc()))
                    self._release(run)
            self._changed.notify_all()

    def _finish(self, run: Run, state: RunState, ev: Any = None) -> None:
        with self._lock:
            if ev is not None:
                run.add(ev)
            run.state = state
            self._changed.notify_all()

    def _release(self, run: Run) -> None:
        """Close a finished run's queue and process handles (file descriptors); its events stay."""
        if run.queue is not None:
            run.queue.close()
            run.queue = None
        if run.process is not None and (run.process.pid is None or not run.process.is_alive()):
            if run.process.pid is not None:
                run.process.close()
            run.process = None

    def _drain(self, run: Run) -> None:
        states = {E.Done: RunState.DONE, E.Failed: RunState.FAILED, E.Stopped: RunState.STOPPED}
        while True:
            try:
                ev = run.queue.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            with self._lock:
                run.add(ev)
                if type(ev) in states:
                    run.state = states[type(ev)]
                self._changed.notify_all()

    def _loop(self) -> None:
        tick = 0
        while True:
            time.sleep(0.1)
            tick += 1
            try:
                self._pump()
                if tick % 10 == 0:  # once a second: a stopped or stuck child is replaced, so nobody waits on it
                    self.helper.check()
                    self.evaluator.check()
            except Exception:  # noqa: BLE001 - the pump must outlive any one run's trouble
                traceback.print_exc()

    def _pump(self) -> None:
        with self._lock:
            live = [r for r in self._runs.values() if r.process is not None]
        for run in live:
            if run.state.finished:  # ended earlier: free its handles once its process has exited
                run.process.join(timeout=0.05)
                self._release(run)
                continue
            self._drain(run)
            alive = run.process.is_alive()
            waited = time.time() - run.stop_requested if run.stop_requested else 0.0
            if run.state is RunState.RUNNING and run.stop_requested and waited > STOP_GRACE_S and alive:
                # asked to stop and still going: terminate, then kill (a stopped or hung process ignores SIGTERM)
                run.process.terminate() if waited < STOP_GRACE_S + KILL_GRACE_S else run.process.kill()
                if waited >= STOP_GRACE_S + KILL_GRACE_S:
                    run.process.join(timeout=1)
                    self._finish(run, RunState.STOPPED, E.Stopped(run.stage, "stopped (engine ended); finished "
                                                                             "stages are cached"))
            elif run.state is RunState.RUNNING and not alive:
                self._drain(run)
                if run.state is RunState.RUNNING:
                    if run.stop_requested:
                        self._finish(run, RunState.STOPPED, E.Stopped(run.stage, "stopped (engine ended); finished "
                                                                                 "stages are cached"))
                    else:
                        self._finish(run, RunState.FAILED, E.Failed(
                            f"the engine process exited unexpectedly (code {run.process.exitcode}). Fix: finished "
                            "stages are cached; start the run again to resume.", run.stage or None))
            if run.state.finished:
                run.process.join(timeout=1)
                self._release(run)
        self._forget_old()
        self._schedule()

    def _forget_old(self) -> None:
        """Drop the oldest finished runs beyond ``keep_finished`` (their events hold images)."""
        with self._lock:
            done = sorted((r for r in self._runs.values() if r.state.finished and r.process is None and r.queue is None),
                          key=lambda r: r.created)
            for run in done[:max(0, len(done) - self.keep_finished)]:
                del self._runs[run.id]

    def _stagewise(self, run: Run) -> None:
        """One ``stage_fn`` call per stage (ZeroGPU); a stop takes effect between stages."""
        try:
            for i in range(1, run.config["stages"] + 1):
                if run.cancel.is_set():
                    self._finish(run, RunState.STOPPED, E.Stopped(i))
                    return
                for ev in self.stage_fn(run.config, self.cache_dir, i):
                    if isinstance(ev, E.RunStarted) and i > 1:
                        continue
                    if isinstance(ev, E.Done):
                        self.book.claim(ev.run_key, run.owner)
                        self._finish(run, RunState.RUNNING, self.helper.call("export_run", self.cache_dir, ev.run_key,
                                                                             self._folder(run.owner)))
                    if isinstance(ev, (E.Failed, E.Stopped, E.Done)):
                        state = {E.Failed: RunState.FAILED, E.Stopped: RunState.STOPPED, E.Done: RunState.DONE}[type(ev)]
                        self._finish(run, state, ev)
                        return
                    self._finish(run, RunState.RUNNING, ev)
        except Exception as e:  # noqa: BLE001 - a GPU host's error becomes the run's message
            self._finish(run, RunState.FAILED, E.Failed(f"the stage call failed ({type(e).__name__}: {e}). Fix: "
                                                        "finished stages are cached; start the run again to resume.",
                                                        None, traceback.format_exc()))
        finally:
            self._schedule()

    # -- for tests and shutdown -----------------------------------------------------------------------
    def processes(self) -> dict[str, list[int]]:
        """The pids of the service's children, by kind (engine, helper, evaluator)."""
        with self._lock:
            engines = [r.process.pid for r in self._runs.values() if r.process is not None and r.process.pid]
        return {"engine": engines, "helper": self.helper.pids(), "evaluator": self.evaluator.pids()}

    def shutdown(self) -> None:
        self.helper.shutdown()
        self.evaluator.shutdown()
        with self._lock:
            for run in self._runs.values():
                if run.process is not None and run.process.is_alive():
                    run.process.kill()


def stage_function(gpu_seconds: int) -> Callable:
    """:func:`pdd_engine.worker.stage_call`, wrapped by ``spaces.GPU`` on a ZeroGPU Space. A ZeroGPU Space
    must import torch in its main process, so this is the one place the web process imports the worker."""
    worker = importlib.import_module(WORKER)
    try:
        import spaces
    except ImportError:
        return worker.stage_call
    return spaces.GPU(duration=gpu_seconds)(worker.stage_call)
