"""Where a stage's independent units run: in this process (``local``) or as Ray tasks (``ray``).

The stage loop stays sequential (stage i+1 needs U_i); inside a stage, units that do not depend on
each other (MTT's expert trajectories, evaluation networks, easy-example scorers) are handed to an
executor as ``map(fn, items, shared)``:
``fn(shared, item)`` for every item, results in order. ``fn`` must be a module-level function and
``shared`` a dict of tensors and plain values, so a unit can run in another process or on another
machine. Each value of ``shared`` goes to Ray's object store once for the executor's life (a run):
the same tensor object passed again by a later stage (the dataset) is not sent again. The driver
alone writes the cache.

    executor = make_executor("ray")          # RAY_ADDRESS joins a cluster, else a local one starts
    trajectories = executor.map(train_experts, [[e] for e in range(10)], shared)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from .errors import Cancelled, PDDError

EXECUTORS = ("local", "ray")
GPU_SHARE = 0.25  # of a GPU per unit on CUDA: several small networks share one


def gpus_for(device) -> float:
    """The GPU share a unit asks for when the run's device is ``device``."""
    return GPU_SHARE if device.type == "cuda" else 0.0


def unit_device(name: str):
    """The device a unit runs on, in whichever process runs it: the run's, or the CPU where that
    process has no GPU."""
    import torch
    return torch.device(name if name == "cpu" or torch.cuda.is_available() else "cpu")


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[dict, Any], Any], items: Sequence[Any], shared: dict,
            cancel: Optional[Callable[[], None]] = None, gpus: float = 0.0,
            done: Optional[Callable[[int], None]] = None) -> list[Any]:
        """``[fn(shared, item) for item in items]``; ``cancel()`` raises Cancelled to stop (checked
        between units); ``done(k)`` after the k-th unit finishes; ``gpus``: GPU share per unit."""

    def close(self) -> None: ...


class LocalExecutor:
    """Units in this process: one after another (``workers`` 1, the reference for every executor), or on
    ``workers`` threads at the caller's torch thread count, which gives the same results in the same order,
    since a unit is a pure function of its inputs at a given thread count.

    Why threads: on a CPU a run splits its threads into two lanes (progressive.SideLane) and the stage loop
    keeps one half. Its units (MTT's experts, the evaluation's networks) ran one after another there while
    the other half sat idle once the side lane had finished (a PDD+MTT run on MNIST: ~600 of its 1458 s on
    2 cores); a run with a side lane maps its units on as many workers as it has lanes."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def map(self, fn, items, shared, cancel=None, gpus=0.0, done=None):
        if self.workers == 1 or len(items) < 2:
            out = []
            for item in items:
                if cancel:
                    cancel()
                out.append(fn(shared, item))
                if done:
                    done(len(out))
            return out
        return self._threaded(fn, items, shared, cancel, done)

    def _threaded(self, fn, items, shared, cancel, done):
        """``map`` on worker threads: each starts its units only while ``cancel`` passes, and a failure
        (a Stop's Cancelled included) is raised here once every started unit has ended."""
        import torch
        threads, lock, finished = torch.get_num_threads(), threading.Lock(), [0]

        def unit(item):
            torch.set_num_threads(threads)  # a new thread's torch default is not the caller's
            if cancel:
                cancel()
            out = fn(shared, item)
            if done:
                with lock:
                    finished[0] += 1
                    done(finished[0])
            return out

        with ThreadPoolExecutor(min(self.workers, len(items)), thread_name_prefix="pdd-unit") as pool:
            futures = [pool.submit(unit, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()  # those not started; started ones end on their own (or at cancel's next check)
        failed = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if failed:
            raise failed[0]
        return [f.result() for f in futures]

    def chains(self, fn, items, shared, steps, advance, cancel=None, on_step=None):
        """:func:`map_chains` on this executor: on workers, each chain's next unit is queued the moment its
        last one ends, so a worker that would wait for the slowest unit of a step starts the next step's."""
        if self.workers == 1 or len(items) < 2 or steps < 1:
            return stepwise(self, fn, items, shared, steps, advance, cancel, on_step=on_step)
        import queue
        import torch
        threads, todo, finished, stop = torch.get_num_threads(), queue.Queue(), queue.Queue(), threading.Event()
        out: list[list] = [[None] * steps for _ in items]

        def worker() -> None:
            torch.set_num_threads(threads)  # a new thread's torch default is not the caller's
            while (job := todo.get()) is not None:
                k, step, item = job
                if stop.is_set():
                    continue
                try:
                    if cancel:
                        cancel()
                    out[k][step] = result = fn(shared, item)
                    if step + 1 < steps:
                        todo.put((k, step + 1, advance(item, result)))
                except BaseException as e:  # a Stop's Cancelled included: raised in the caller
                    finished.put(e)
                    continue
                finished.put(step)

        for k, item in enumerate(items):
            todo.put((k, 0, item))
        pool = [threading.Thread(target=worker, name=f"pdd-unit_{n}", daemon=True)
                for n in range(min(self.workers, len(items)))]
        for t in pool:
            t.start()
        count, reported, failure = [0] * steps, [0], None

        def report() -> None:  # in the caller's thread: each step to on_step once every chain has finished it
            while reported[0] < steps and count[reported[0]] == len(items):
                if on_step:
                    on_step(reported[0], [chain[reported[0]] for chain in out])
                reported[0] += 1

        try:
            for _ in range(len(items) * steps):
                step = finished.get()
                if isinstance(step, BaseException):
                    failure = step
                    break
                count[step] += 1
                report()
        finally:  # done, failed or interrupted: no unit starts any more, and the started ones end first
            stop.set()
            for _ in pool:
                todo.put(None)
            for t in pool:
                t.join()
        if failure is not None:  # what the units still running finished is kept too, then the failure raised
            while not finished.empty():
                if not isinstance(step := finished.get(), BaseException):
                    count[step] += 1
            report()
            raise failure
        return out

    def close(self) -> None:
        pass


def stepwise(executor, fn, items, shared, steps, advance, cancel=None, gpus=0.0, on_step=None) -> list[list]:
    """:func:`map_chains` as one ``map`` per step (any executor): the reference for the chained order."""
    out: list[list] = [[] for _ in items]
    for step in range(steps):
        results = executor.map(fn, items, shared, cancel, gpus)
        for k, r in enumerate(results):
            out[k].append(r)
        if on_step:
            on_step(step, results)
        if step + 1 < steps:
            items = [advance(item, r) for item, r in zip(items, results)]
    return out


def map_chains(executor, fn: Callable[[dict, Any], Any], items: Sequence[Any], shared: dict, steps: int,
               advance: Callable[[Any, Any], Any], cancel: Optional[Callable[[], None]] = None,
               gpus: float = 0.0, on_step: Optional[Callable[[int, list], None]] = None) -> list[list[Any]]:
    """``steps`` units per item, each chain's next item ``advance(item, result)`` of its last: ``out[k][s]``
    is chain k's result at step s. ``on_step(s, results)`` runs in the caller's thread as soon as every chain
    has finished step s (a driver stores it there, so a Stop or a failure later loses no finished step).
    Chains are independent and each unit a pure function of its item, so the results are those of one
    ``map`` per step; a local executor with workers interleaves the steps (three evaluation networks, two
    steps, two workers: three rounds of units instead of four). A failure, a Stop's Cancelled or an
    interrupt is raised here once the started units have ended."""
    if isinstance(executor, LocalExecutor):
        return executor.chains(fn, items, shared, steps, advance, cancel, on_step)
    return stepwise(executor, fn, items, shared, steps, advance, cancel, gpus, on_step)


def _in_worker(fn: Callable, threads: int, shared: dict, item: Any) -> Any:
    """A unit in a Ray worker: the driver's torch thread count, so results match the local executor, and
    the engine's allocator settings (device.tune_allocator), so it runs as fast."""
    import torch
    from .device import tune_allocator
    torch.set_num_threads(threads)
    tune_allocator()
    return fn(shared, item)


class RayExecutor:
    """Units as Ray tasks (``num_cpus`` 1, ``num_gpus`` a fraction so small networks share a GPU),
    retried when a worker or its node dies; a stopped run cancels what is still outstanding."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, retries: int = 3):
        try:
            import ray
        except ImportError:
            raise PDDError("the ray executor needs Ray, which is not installed",
                           "pip install -r requirements-ray.txt, or choose the local executor "
                           "(--executor local; the studio's Executor field)") from None
        self.ray, self.retries = ray, retries
        # id(value) -> (value, object ref): each shared value is put once while this executor lives;
        # holding the value itself keeps its id from being reused by another object
        self._stored: dict[int, tuple[Any, Any]] = {}
        self.puts: dict[str, int] = {}  # how many times each shared name went to the object store
        if not ray.is_initialized():
            root = str(Path(__file__).resolve().parents[1])  # workers import pdd_engine from here
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}}
            address = address or os.environ.get("RAY_ADDRESS") or None
            try:
                ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
            except Exception as e:  # noqa: BLE001 - any failure to reach a cluster is the user's setting
                raise PDDError(f"could not start or reach a Ray cluster{f' at {address}' if address else ''} "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})",
                               "check RAY_ADDRESS; for a token-authenticated cluster set RAY_AUTH_MODE=token "
                               "(and RAY_AUTH_TOKEN), or choose the local executor (--executor local; the studio's "
                               "Executor field)") from None
        self._task = ray.remote(_in_worker)

    def map(self, fn, items, shared, cancel=None, gpus=0.0, done=None):
        import torch
        ray = self.ray
        refs = {k: self._put(k, v) for k, v in shared.items()}  # once for all the units, and for later maps
        task = self._task.options(num_cpus=1, num_gpus=gpus, max_retries=self.retries, retry_exceptions=False)
        pending = [task.remote(fn, torch.get_num_threads(), _Shared(refs), item) for item in items]
        try:
            finished = 0
            while True:
                ready, rest = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                for k in range(finished + 1, len(ready) + 1):
                    if done:
                        done(k)
                finished = len(ready)
                if not rest:
                    return ray.get(pending)
                if cancel:
                    cancel()
        except Cancelled:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _put(self, name: str, value: Any):
        """``value``'s object ref: put on its first use, the same ref after (values must not change)."""
        hit = self._stored.get(id(value))
        if hit is None:
            hit = self._stored[id(value)] = (value, self.ray.put(value))
            self.puts[name] = self.puts.get(name, 0) + 1
        return hit[1]

    def close(self) -> None:
        """Forget the stored values (their object-store copies are freed with the refs)."""
        self._stored.clear()


class _Shared(dict):
    """``shared`` as the task sees it: Ray resolves object refs passed at the top level of a task's
    arguments only, so the dict travels as refs and is resolved on first use inside the worker."""

    def __init__(self, refs: dict):
        super().__init__(refs)
        self._resolved = False

    def __getitem__(self, key):
        if not self._resolved:
            import ray
            values = ray.get(list(dict.values(self)))
            dict.update(self, zip(dict.keys(self), values))
            self._resolved = True
        return dict.__getitem__(self, key)


def ping(shared: dict, item: Any) -> Any:
    """A unit that does nothing: what an executor costs per task (bench/speed.py --only executor)."""
    return item


def or_local(executor: Optional[Executor]) -> Executor:
    """``executor``, or units in this process where none is given (a method or step called on its own)."""
    return executor if executor is not None else LocalExecutor()


def make_executor(name: Optional[str] = None) -> Executor:
    """``name``, else ``PDD_EXECUTOR``, else local."""
    name = name or os.environ.get("PDD_EXECUTOR") or "local"
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor()
    raise PDDError(f"unknown executor '{name}'", f"use one of {', '.join(EXECUTORS)} (--executor, PDD_EXECUTOR, the studio's Executor field)")
