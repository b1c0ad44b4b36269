"""The child half of the service: what runs in the service's processes (:mod:`pdd_engine.service`).

Each function is an entry point a child process calls by name (the web process never imports this module,
so it never imports torch): one engine process per run (:func:`run_engine`), a long-lived helper for quick
answers (:func:`check`, :func:`schema`, :func:`time_network`, :func:`preview`, :func:`export_run`,
:func:`manifest`) and an evaluator for bundle re-evaluations (:func:`evaluate`). Every answer is plain data
(dicts, lists, numpy arrays, the engine's events), and every user-facing failure is a one-line PDDError.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch

from . import events as E
from . import runs
from .cache import Store
from .config import DistillConfig, check_caps, schema as config_schema
from .datasets import find
from .device import resolve_device, resolved, tune_allocator
from .errors import PDDError
from .files import write_error
from .evaluate import ARCHITECTURES
from .estimate import config_warnings, cost_key, estimate, human_time, pass_cost
from .export import evaluate_bundle, export_bundle, load_bundle, stage_archive
from .preview import preview_dataset
from .progressive import run


def exit_with_parent(parent: int) -> None:
    """Process initializer: exit as soon as the server that started this process is gone, even
    after kill -9 (then nothing runs atexit handlers), so no engine or helper outlives it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="pdd-parent-watch").start()


# -- the engine process ------------------------------------------------------------------------
def run_engine(cfg_dict: dict, cache_dir: Optional[str], out, cancel, threads: int, export_dir: Optional[str],
               owner: str, parent: int) -> None:
    """One run, in a process of its own: every event goes to ``out``. A finished run is claimed for
    ``owner`` and its bundle written (both before Done), so the web server never loads data or exports.
    Never raises."""
    exit_with_parent(parent)
    try:
        if threads:
            torch.set_num_threads(threads)
        store = Store(cache_dir)
        for ev in run(DistillConfig(**cfg_dict), store, cancel):
            if isinstance(ev, E.Done):
                runs.book(store).claim(ev.run_key, owner)  # listed for its owner before anyone sees it finish
                if export_dir:
                    out.put(export_run(cache_dir, ev.run_key, export_dir, store))
            out.put(ev)
    except PDDError as e:  # e.g. an unusable cache directory: the user's problem, said in one line
        out.put(E.Failed(str(e), None))
    except BaseException as e:  # noqa: BLE001 - the process must report, not die silently
        out.put(E.Failed(f"the engine crashed ({type(e).__name__}: {e}). Fix: finished stages are cached; "
                         "start the run again to resume.", None, traceback.format_exc()))


def stage_call(cfg_dict: dict, cache_dir: Optional[str], stage: int) -> list:
    """Run the engine up to ``stage`` (earlier stages replay from the cache); return that stage's events.

    The unit of work for hosts that lend a GPU per call (Hugging Face ZeroGPU): each call is one stage
    long and all state between calls lives in the on-disk cache.
    """
    keep = (E.RunStarted, E.Done, E.Failed, E.Stopped)
    return [ev for ev in run(DistillConfig(**cfg_dict), Store(cache_dir), until=stage)
            if isinstance(ev, keep) or getattr(ev, "stage", None) == stage]


# -- exports ----------------------------------------------------------------------------------
EXPORT_FOLDER = "PDD_EXPORT_DIR (the run is finished and listed: download it again from the Runs tab)"


def usable_bundle(path: Path) -> bool:
    """Whether an earlier export at ``path`` is whole (a truncated or damaged file is written again)."""
    try:
        load_bundle(path)
        return True
    except PDDError:
        return False


def export_run(cache_dir: Optional[str], run_key: str, export_dir: str, store: Optional[Store] = None) -> E.Exported:
    """The bundle and per-stage archives of a finished run in ``export_dir``: kept if a whole one is there,
    else written (atomically: a failed write leaves no file). A failure is the event's one-line error."""
    try:
        store = store or Store(cache_dir)
        rec = runs.get(store, run_key)
        path = Path(export_dir) / f"{rec.file_stem}.zip"
        if path.exists() and usable_bundle(path):
            os.utime(path)  # in use again: the export folder's pruning goes by age
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            runs.export(store, rec.key, path, flag=EXPORT_FOLDER)
        stages = [str(stage_archive(path, i, path.with_name(f"{path.stem}_stage{i}.zip"), EXPORT_FOLDER))
                  for i in range(1, rec.config["stages"] + 1)]
        return E.Exported(str(path), stages)
    except PDDError as e:  # the run is finished and listed either way: its bundle can be downloaded again later
        return E.Exported(None, [], str(e))
    except OSError as e:
        return E.Exported(None, [], str(write_error(e, Path(export_dir), EXPORT_FOLDER)))


# -- quick answers (the helper process) ----------------------------------------------------------
def schema(data_root: Optional[str]) -> dict:
    """Every setting, method, dataset (with whether it is on this machine) and preset, as plain data."""
    out = {**config_schema(), "architectures": list(ARCHITECTURES)}
    for d in out["datasets"]:
        d["availability"] = find(d["name"]).availability(data_root)
    return out


def device(name: str) -> str:
    """The device a run asking for ``name`` would use ("cuda" without a GPU: the run reports it)."""
    try:
        return resolve_device(name).type
    except PDDError:
        return "cpu"


timed: set[tuple] = set()  # the network shapes this helper process has timed (pass_cost memoises the values)


def time_network(*key) -> tuple[float, float]:
    """:func:`pdd_engine.estimate.pass_cost` for one network shape, memoised in this process."""
    out = pass_cost(*key)
    timed.add(key)
    return out


def check(values: dict, shape: Optional[tuple], caps: bool, timed_only: bool) -> dict:
    """Validate ``values`` (flat names) as a run's settings and price it, as plain data: ``ok``, the
    ``error`` line, the normalised ``config``, ``warnings``, each automatic field's ``automatic`` value and
    the ``estimate`` (seconds and text). ``caps``: also refuse what is over the server's maxima.
    ``timed_only``: price only with network timings already measured here, and otherwise name the shape to
    time (``timing``) instead of timing it now (a control change must answer at once)."""
    try:
        cfg = resolved(DistillConfig.make(values, other_methods="drop"))  # auto arithmetic: this machine's
        if caps:
            check_caps(cfg)
    except PDDError as e:
        return {"ok": False, "error": str(e)}
    size = cfg.image_size or (shape[1] if shape else None)
    n_train = shape[3] if shape else None
    out = {"ok": True, "error": "", "config": cfg.to_dict(), "ipcs": list(cfg.ipcs),
           "warnings": [w.removeprefix("warning: ") for w in config_warnings(cfg, n_train)],
           "automatic": cfg.automatic(size, n_train) if size and n_train else {}, "estimate": None, "timing": None}
    dev = device(cfg.device)
    missing = [k for k in {cost_key(cfg, dev, shape, p) for p in {"float32", cfg.precision, cfg.eval_precision}}
               if timed_only and k not in timed]
    if missing:
        out["timing"] = missing[0]
        return out
    est = estimate(cfg, shape, dev, cost=time_network)
    out["estimate"] = {"seconds": est.seconds, "peak_bytes": est.peak_bytes, "text": str(est),
                       "time": human_time(est.seconds)}
    return out


SHOWN_CLASSES = 50  # rows of the studio's data panel; the facts count every class
SHOWN_PX = 40  # a panel cell's side: the images a preview answer keeps are no larger


def preview(name: str, data_root: Optional[str], image_size: Optional[int]) -> dict:
    """A dataset's facts and real images per class (never downloads), as plain data. The web process
    remembers answers (one per dataset and image size): at 128 px and hundreds of classes one held 78 MB
    of pixels no panel shows, so an answer keeps the panel's rows at the panel's cell size."""
    p = preview_dataset(name, data_root, image_size=image_size, shown_classes=SHOWN_CLASSES, shown_px=SHOWN_PX)
    return {**p.facts(), "images": p.images, "labels": p.labels}


def manifest(path: str) -> dict:
    """A bundle's verified manifest (BundleError if it is none)."""
    return load_bundle(path).manifest


# -- the evaluator process ----------------------------------------------------------------------
def evaluate(path: str, arch: Optional[str], models: Optional[int], epochs: Optional[int],
             data_root: Optional[str], data: Optional[str], threads: int) -> list[list[float]]:
    """:func:`pdd_engine.export.evaluate_bundle` (one architecture) in the evaluator process."""
    if threads:
        torch.set_num_threads(threads)
    tune_allocator()
    return evaluate_bundle(path, arch, epochs, models, data_root=data_root, data=data, caps=True)
