"""Background engine jobs: each run is a separate worker process that streams events back.

The web server never runs the engine in its own threads: a long run cannot block the UI, Stop
really stops it (cancel token first, then the process is terminated), and a crash in the engine
becomes a job failure with its cause while the server stays up. At most ``max_concurrent`` engines
run at once; other jobs wait in a FIFO queue and know their position.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
import queue
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from pdd_engine import events as E
from pdd_engine.config import DistillConfig
from pdd_engine.errors import PDDError

from .settings import env_number

STOP_GRACE_S = 10.0


def exit_with_parent(parent: int) -> None:
    """Process initializer: exit as soon as the server that started this process is gone, even
    after kill -9 (then nothing runs atexit handlers), so no engine or helper outlives it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="pdd-parent-watch").start()


def worker_main(cfg_dict: dict, cache_dir: Optional[str], out: "mp.Queue", cancel: "mp.Event", threads: int,
                export_dir: Optional[str] = None) -> None:
    """Worker process entry: run the engine and forward every event; a finished run's bundle is
    written here, before Done, so the web server never loads data or exports. Never raises."""
    exit_with_parent(os.getppid())
    try:
        import torch

        from pdd_engine.cache import Store
        from pdd_engine.progressive import run

        if threads:
            torch.set_num_threads(threads)
        store = Store(cache_dir)
        for ev in run(DistillConfig(**cfg_dict), store, cancel):
            if isinstance(ev, E.Done) and export_dir:
                out.put(export_run(store, ev.run_key, export_dir))
            out.put(ev)
    except PDDError as e:  # e.g. an unusable cache directory: the user's problem, said in one line
        out.put(E.Failed(str(e), None))
    except BaseException as e:  # noqa: BLE001 - the process must report, not die silently
        out.put(E.Failed(f"the engine crashed ({type(e).__name__}: {e}). Fix: finished stages are cached; "
                         "start the run again to resume.", None, traceback.format_exc()))


def export_run(store, run_key: str, export_dir: str) -> "E.Exported":
    """The bundle and per-stage archives of a finished run in ``export_dir`` (kept if already there)."""
    from pdd_engine import runs
    from pdd_engine.export import stage_archive

    try:
        rec = runs.get(store, run_key)
        path = Path(export_dir) / f"{rec.file_stem}.zip"
        if path.exists():
            os.utime(path)  # in use again: the export folder's pruning goes by age
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            runs.export(store, rec.key, path)
        stages = [str(stage_archive(path, i, path.with_name(f"{path.stem}_stage{i}.zip")))
                  for i in range(1, rec.config.stages + 1)]
        return E.Exported(str(path), stages)
    except PDDError as e:
        return E.Exported(None, [], str(e))


def export_call(cache_dir: Optional[str], run_key: str, export_dir: str) -> "E.Exported":
    """:func:`export_run` for a process of its own (the Runs tab's downloads)."""
    from pdd_engine.cache import Store
    return export_run(Store(cache_dir), run_key, export_dir)


def pass_cost_call(*shape) -> tuple[float, float]:
    """:func:`pdd_engine.estimate.pass_cost` for the helper process."""
    from pdd_engine.estimate import pass_cost
    return pass_cost(*shape)


def extra_memory_call(cfg_dict: dict, *shape) -> int:
    """:func:`pdd_engine.estimate.extra_memory` for the helper process."""
    from pdd_engine.estimate import extra_memory
    return extra_memory(DistillConfig(**cfg_dict), *shape)


def device_call(name: str) -> str:
    """:func:`pdd_engine.device.resolve_device` for the helper process: the device a run would use."""
    from pdd_engine.device import resolve_device
    try:
        return resolve_device(name).type
    except Exception:  # "cuda" without a GPU: the run itself reports it; the estimate assumes CPU
        return "cpu"


def preview_call(name: str, data_root: Optional[str], image_size: Optional[int]):
    """:func:`pdd_engine.preview.preview_dataset` for the helper process (data loading stays out of
    the server)."""
    from pdd_engine.preview import preview_dataset
    return preview_dataset(name, data_root, image_size=image_size)


def manifest_call(path: str) -> dict:
    """A bundle's verified manifest (:func:`pdd_engine.export.load_bundle`; BundleError if it is none)."""
    from pdd_engine.export import load_bundle
    return load_bundle(path).manifest


def evaluate_call(path: str, arch: Optional[str], models: Optional[int], epochs: Optional[int],
                  data_root: Optional[str], data: Optional[str], threads: int) -> list[list[float]]:
    """:func:`pdd_engine.export.evaluate_bundle` in the evaluator process."""
    import torch

    from pdd_engine.export import evaluate_bundle
    if threads:
        torch.set_num_threads(threads)
    return evaluate_bundle(path, arch, epochs, models, data_root=data_root, data=data)


def stage_call(cfg_dict: dict, cache_dir: Optional[str], stage: int) -> list:
    """Run the engine up to ``stage`` (earlier stages replay from the cache); return stage's events.

    This is the unit of work for hosts that lend a GPU per call (Hugging Face ZeroGPU): each call
    is one stage long and all state between calls lives in the on-disk cache.
    """
    from pdd_engine.cache import Store
    from pdd_engine.progressive import run

    keep = (E.RunStarted, E.Done, E.Failed, E.Stopped)
    return [ev for ev in run(DistillConfig(**cfg_dict), Store(cache_dir), until=stage)
            if isinstance(ev, keep) or getattr(ev, "stage", None) == stage]


def zerogpu_stage_fn():
    """``stage_call`` wrapped by ``spaces.GPU`` when running on a ZeroGPU Space, else None."""
    import os
    if not os.environ.get("SPACES_ZERO_GPU") and not os.environ.get("PDD_STAGEWISE"):
        return None
    try:
        import spaces
    except ImportError:
        return stage_call if os.environ.get("PDD_STAGEWISE") else None
    return spaces.GPU(duration=env_number("PDD_GPU_SECONDS", 120))(stage_call)


@dataclass
class Job:
    id: str
    config: DistillConfig
    owner: str
    created: float = field(default_factory=time.time)
    state: str = "queued"  # queued | running | done | failed | stopped
    events: list = field(default_factory=list)
    process: Optional[mp.Process] = None
    thread: Optional[threading.Thread] = None
    cancel: Any = None
    queue: Any = None
    stop_requested: float = 0.0
    # when each stage started, and each (stage, phase)'s first iteration: (time, iteration), for the
    # page's per-stage timing and how long the iterations still take
    stage_started: dict = field(default_factory=dict)
    first_progress: dict = field(default_factory=dict)

    def add(self, ev: Any) -> None:
        """Append an engine event, noting the times the page's timing reads."""
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
    def finished(self) -> bool:
        return self.state in ("done", "failed", "stopped")


class JobManager:
    """Owns the worker processes. Thread-safe; one instance per server."""

    def __init__(self, cache_dir: Optional[str] = None, max_concurrent: int = 1, threads: int = 0, stage_fn=None,
                 export_dir: Optional[str] = None, keep_finished: int = 100):
        """``stage_fn``: run jobs as one call per stage (see :func:`stage_call`) instead of a worker process.
        ``export_dir``: where finished runs' bundles are written (by the worker, not the server).
        ``keep_finished``: finished jobs kept in memory for ``?run=`` links (the oldest are forgotten;
        their runs stay in the cache and a re-run replays them)."""
        self.keep_finished = keep_finished
        self.stage_fn = stage_fn
        self.cache_dir = cache_dir
        self.export_dir = export_dir
        self._store = None  # opened on the first finished run: owner marks
        self._exporter: Optional[ProcessPoolExecutor] = None
        self._evaluator: Optional[ProcessPoolExecutor] = None
        self._previews: dict[tuple, Future] = {}  # dataset previews, by (name, data_root, image_size)
        self._costs: dict[tuple, Future] = {}  # pass_cost measurements, by shape
        self._devices: dict[str, Future] = {}  # resolved devices, by requested name
        self._memory: dict[tuple, Future] = {}  # methods' extra memory, by (config, shape)
        self.max_concurrent = max(1, max_concurrent)
        self.threads = threads
        self.ctx = mp.get_context("spawn")
        self.jobs: dict[str, Job] = {}
        self.waiting: list[str] = []
        self.lock = threading.RLock()
        self._pump = threading.Thread(target=self._loop, daemon=True, name="pdd-jobs")
        self._pump.start()

    # -- public -------------------------------------------------------------------------
    def submit(self, cfg: DistillConfig, owner: str) -> Job:
        job = Job(secrets.token_hex(8), cfg, owner)
        with self.lock:
            self.jobs[job.id] = job
            self.waiting.append(job.id)
        self._schedule()
        return job

    def get(self, job_id: str) -> Optional[Job]:
        return self.jobs.get(job_id or "")

    def position(self, job_id: str) -> int:
        """1-based place in the queue (0 when not waiting)."""
        with self.lock:
            return self.waiting.index(job_id) + 1 if job_id in self.waiting else 0

    def stop(self, job_id: str, owner: str) -> str:
        job = self.get(job_id)
        if job is None:
            return "No such run."
        if job.owner != owner:
            return "This run was started from another browser; only its owner can stop it."
        with self.lock:
            if job.id in self.waiting:
                self.waiting.remove(job.id)
                job.state = "stopped"
                job.events.append(E.Stopped(0, "removed from the queue before it started"))
                return "Removed from the queue."
            if job.state == "running":
                job.cancel.set()
                job.stop_requested = time.time()
                if job.thread is not None:
                    return "Stopping after the current stage; finished stages stay cached."
                return "Stopping after the current iteration; finished stages stay cached."
        return f"The run is already {job.state}."

    def active_configs(self) -> list[DistillConfig]:
        return [j.config for j in self.jobs.values() if not j.finished]

    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "running")

    def helper(self) -> ProcessPoolExecutor:
        """One long-lived helper process for engine work the server needs an answer to (exports, the
        estimate's timing), so none of it runs, or is skewed, in the server's request threads."""
        with self.lock:
            if self._exporter is None:
                self._exporter = ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=exit_with_parent,
                                                     initargs=(os.getpid(),))
            return self._exporter

    def evaluator(self) -> ProcessPoolExecutor:
        """A process for bundle evaluations (minutes of training each), apart from the helper, so the
        estimate and previews stay quick while one runs; one evaluation at a time, in order."""
        with self.lock:
            if self._evaluator is None:
                self._evaluator = ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=exit_with_parent,
                                                      initargs=(os.getpid(),))
            return self._evaluator

    def preview(self, name: str, data_root: Optional[str] = None, image_size: Optional[int] = None,
                timeout: Optional[float] = 120):
        """A dataset's :class:`~pdd_engine.preview.DatasetPreview`, read once by the helper process."""
        return self._ask(self._previews, (name, data_root, image_size), preview_call, name, data_root, image_size,
                         keep=32).result(timeout=timeout)

    def manifest(self, path: str) -> dict:
        """A bundle's verified manifest, read by the helper process."""
        return self.helper().submit(manifest_call, path).result()

    def evaluate(self, path: str, arch: Optional[str], models: Optional[int], epochs: Optional[int],
                 data_root: Optional[str] = None, data: Optional[str] = None) -> Future:
        """One architecture's re-evaluation of a bundle, queued in the evaluator process."""
        return self.evaluator().submit(evaluate_call, path, arch, models, epochs, data_root, data, self.threads)

    def export(self, run_key: str, owner: str = "") -> "E.Exported":
        """A cached run's bundle, written by the helper process (data loading stays out of the server)."""
        return self.helper().submit(export_call, self.cache_dir, run_key, self.exports_of(owner)).result()

    def exports_of(self, owner: str) -> Optional[str]:
        """An owner's own export folder, named by the hash of its token: the file route serves the
        export folder, and a bundle's path is then as hard to guess as the owner's token."""
        from pdd_engine.runs import owner_id
        return None if self.export_dir is None else str(Path(self.export_dir) / owner_id(owner))

    def pass_cost(self, *shape, timeout: Optional[float] = 120) -> tuple[float, float]:
        """:func:`pdd_engine.estimate.pass_cost`, measured once per shape in the helper process;
        raises TimeoutError if the measurement is not done within ``timeout`` s (it goes on)."""
        return self._ask(self._costs, shape, pass_cost_call, *shape).result(timeout=timeout)

    def extra_memory(self, cfg: DistillConfig, *shape, timeout: Optional[float] = 120) -> int:
        """:func:`pdd_engine.estimate.extra_memory`, answered by the helper process (once per input;
        one entry per config seen, so only the recent ones are kept)."""
        return self._ask(self._memory, (repr(cfg), shape), extra_memory_call, cfg.to_dict(), *shape,
                         keep=256).result(timeout=timeout)

    def device(self, name: str, timeout: Optional[float] = 120) -> str:
        """The device a run asking for ``name`` would use, answered once by the helper process (the
        server never imports torch or creates a CUDA context for it)."""
        return self._ask(self._devices, name, device_call, name).result(timeout=timeout)

    def calibrate(self, shapes: list[tuple]) -> None:
        """Start measuring ``shapes`` now (at launch, before any engine loads the machine)."""
        for shape in shapes:
            self._ask(self._costs, shape, pass_cost_call, *shape)

    def _ask(self, answers: dict, key: Any, fn, *args, keep: Optional[int] = None) -> Future:
        """The helper process's answer to ``fn(*args)``, computed once per ``key`` (``keep``: at most
        that many answers are kept, the oldest dropped first)."""
        with self.lock:
            if key not in answers:
                while keep is not None and len(answers) >= keep:
                    answers.pop(next(iter(answers)))
                answers[key] = self.helper().submit(fn, *args)
            return answers[key]

    def shutdown(self) -> None:
        for pool in (self._exporter, self._evaluator):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        for job in list(self.jobs.values()):
            if job.process is not None and job.process.is_alive():
                job.process.terminate()

    # -- internals ----------------------------------------------------------------------
    def _schedule(self) -> None:
        with self.lock:
            while self.waiting and self.running() < self.max_concurrent:
                job = self.jobs[self.waiting.pop(0)]
                job.state = "running"
                if self.stage_fn is not None:
                    job.cancel = threading.Event()
                    job.thread = threading.Thread(target=self._stagewise, args=(job,), daemon=True)
                    job.thread.start()
                    continue
                try:
                    job.queue, job.cancel = self.ctx.Queue(), self.ctx.Event()
                    job.process = self.ctx.Process(target=worker_main, daemon=True, name=f"pdd-engine-{job.id}",
                                                   args=(job.config.to_dict(), self.cache_dir, job.queue, job.cancel,
                                                         self.threads, self.exports_of(job.owner)))
                    job.process.start()
                except Exception as e:  # e.g. "Too many open files": this job fails, the server goes on
                    job.events.append(E.Failed(f"the engine process could not start ({type(e).__name__}: {e}). Fix: "
                                               "wait for other runs to finish and start it again.", None,
                                               traceback.format_exc()))
                    job.state = "failed"
                    self._release(job)

    def _release(self, job: Job) -> None:
        """Close a finished job's queue and process handles (file descriptors); its events stay."""
        if job.queue is not None:
            job.queue.close()
            job.queue = None
        if job.process is not None and job.process.pid is not None and not job.process.is_alive():
            job.process.close()
            job.process = None
        elif job.process is not None and job.process.pid is None:  # never started
            job.process = None

    def _drain(self, job: Job) -> None:
        while True:
            try:
                ev = job.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, E.Done):  # listed for its owner before anyone sees it finish
                self._claim(job, ev)
            job.add(ev)
            if isinstance(ev, E.Done):
                job.state = "done"
            elif isinstance(ev, E.Failed):
                job.state = "failed"
            elif isinstance(ev, E.Stopped):
                job.state = "stopped"

    def _loop(self) -> None:
        while True:
            time.sleep(0.1)
            try:
                self._pump_once()
            except Exception:  # noqa: BLE001 - the pump must outlive any one job's trouble
                traceback.print_exc()

    def _pump_once(self) -> None:
        with self.lock:
            live = [j for j in self.jobs.values() if j.process is not None]
        for job in live:
            if job.finished:  # ended earlier: free its handles once its process has exited
                job.process.join(timeout=0.05)
                self._release(job)
                continue
            self._drain(job)
            alive = job.process.is_alive()
            if job.state == "running" and job.stop_requested and time.time() - job.stop_requested > STOP_GRACE_S:
                job.process.terminate()
                job.events.append(E.Stopped(self._stage(job), "stopped (engine terminated); finished stages are cached"))
                job.state = "stopped"
            elif job.state == "running" and not alive:
                self._drain(job)
                if job.state == "running":
                    job.events.append(E.Failed(f"the engine process exited unexpectedly (code {job.process.exitcode}). "
                                               "Fix: finished stages are cached; start the run again to resume.",
                                               self._stage(job)))
                    job.state = "failed"
            if job.finished:
                job.process.join(timeout=1)
                self._release(job)
        self._forget_old()
        self._schedule()

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep_finished`` (their events hold images)."""
        with self.lock:
            done = sorted((j for j in self.jobs.values() if j.finished and j.process is None and j.queue is None),
                          key=lambda j: j.created)
            for job in done[:max(0, len(done) - self.keep_finished)]:
                del self.jobs[job.id]

    def _stagewise(self, job: Job) -> None:
        """One ``stage_fn`` call per stage; stop requests take effect between stages."""
        stages = job.config.stages
        try:
            for i in range(1, stages + 1):
                if job.cancel.is_set():
                    job.events.append(E.Stopped(i))
                    job.state = "stopped"
                    return
                for ev in self.stage_fn(job.config.to_dict(), self.cache_dir, i):
                    if isinstance(ev, E.RunStarted) and i > 1:
                        continue
                    if isinstance(ev, E.Done) and self.export_dir:  # this thread, not a request thread
                        from pdd_engine.cache import Store
                        job.events.append(export_run(Store(self.cache_dir), ev.run_key, self.exports_of(job.owner)))
                    if isinstance(ev, E.Done):
                        self._claim(job, ev)
                    job.add(ev)
                    if isinstance(ev, (E.Failed, E.Stopped)):
                        job.state = "failed" if isinstance(ev, E.Failed) else "stopped"
                        return
            job.state = "done"
        except Exception as e:  # noqa: BLE001 - a GPU host's error becomes the job's message
            job.events.append(E.Failed(f"the stage call failed ({type(e).__name__}: {e}). Fix: finished stages are "
                                       "cached; start the run again to resume.", None, traceback.format_exc()))
            job.state = "failed"
        finally:
            self._schedule()

    def _claim(self, job: Job, done: E.Done) -> None:
        """A finished run is listed for the browser that ran it (the computation stays shared)."""
        from pdd_engine import runs
        from pdd_engine.cache import Store

        try:
            if self._store is None:
                self._store = Store(self.cache_dir)
            runs.claim(self._store, done.run_key, job.owner)
        except Exception:  # noqa: BLE001 - an unlisted run is still cached; the job must finish
            traceback.print_exc()

    @staticmethod
    def _stage(job: Job) -> int:
        stages = [e.stage for e in job.events if isinstance(e, E.StageStarted)]
        return stages[-1] if stages else 0
