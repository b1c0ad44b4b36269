"""Progressive Dataset Distillation: the stage loop, generic over base methods.

``run(config)`` yields events (:mod:`pdd_engine.events`) while it distils S_1..S_P. Each stage,
its curriculum evaluation and its random baseline are stored under content hashes as soon as they
finish, so a repeated run replays from disk, a longer run reuses the prefix, and a stopped or
killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Protocol

import numpy as np
import torch

from . import runs
from .augment import mirror_note
from .cache import Store
from .config import DistillConfig
from .data import Dataset, dataset_for, dataset_info, to_uint8
from .device import arithmetic, auto_reason, precision_note, resolve_device, resolved, tune_allocator
from .errors import CacheError, Cancelled, PDDError
from .executor import Executor, LocalExecutor, gpus_for, make_executor, map_chains, or_local, unit_device
from .evaluate import Curriculum, EvalProtocol, make_curriculum, network_groups, random_subset, use_batched
from .events import (Done, Event, Failed, Message, Progress, RunStarted, StageEvaluated, StageFinished,
                     StageImages, StageStarted, Stopped)
from .keys import Keys
from .records import eval_check, stage_check
from .registry import find
from .settings import env
from .strategy import FIELD_STRATEGY
from .methods import StageContext, get_method
from .methods.base import Memo
from .training import SGD, predict, seed_of
from .datasets.userdata import skipped_files


LANE_NICE = 10  # how far the side lane's thread steps back for the stage loop's (yield_to_the_stage_loop)


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


def filter_easy(ds: Dataset, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, cfg: DistillConfig,
                stage: int, device: torch.device, executor: Optional[Executor] = None, cancel=None) -> torch.Tensor:
    """PDD's optional step: drop real examples every scorer gets right, keeping each with p=keep_easy.

    Scorers are ``filter_models`` networks trained on U_i (x, y) with the evaluation protocol, each an
    independent unit (:func:`score_easy`) on ``executor``. Returns the new boolean mask over ``ds.x_train``.
    """
    proto = replace(EvalProtocol.from_config(cfg, ds.size), models=cfg.filter_models, seed=seed_of(cfg.seed, 31, stage))
    idx = torch.nonzero(keep).flatten()
    shared = eval_shared(ds, proto, device, False, union_x=x.cpu(), union_y=y.cpu(), real_x=ds.x_train,
                         real_y=ds.y_train, idx=idx)
    right = or_local(executor).map(score_easy, list(range(proto.models)), shared, cancel, gpus=gpus_for(device))
    easy = torch.stack(right).all(0)
    coin = torch.rand(len(idx), generator=torch.Generator().manual_seed(seed_of(cfg.seed, 37, stage)))
    drop = easy & (coin >= cfg.keep_easy)
    new = keep.clone()
    new[idx[drop]] = False
    return new


def score_easy(shared: dict, k: int) -> torch.Tensor:
    """Scorer ``k`` of :func:`filter_easy`: trained on the union, it says which kept real examples
    (``shared["idx"]``) it classifies right; a pure function of its inputs, like every unit."""
    scorer = unit_curriculum(shared, [k])
    scorer.fit(shared["union_x"], shared["union_y"])
    idx, device = shared["idx"], scorer.device
    with scorer.arithmetic():
        return (predict(scorer.nets[0], shared["real_x"][idx].to(device)) == shared["real_y"][idx].to(device)).cpu()


def eval_shared(ds: Dataset, proto: EvalProtocol, device: torch.device, batched: bool, **more) -> dict:
    """What every evaluation-protocol unit (curriculum networks, scorers) shares: the test split
    (``ds.eval_view``, one object per dataset, so an executor ships it once), the protocol, the run's
    device and whether the unit's networks train together; ``more``: the caller's own tensors."""
    return {"ds": ds.eval_view, "proto": proto.to_dict(), "device": str(device), "batched": batched, **more}


def unit_curriculum(shared: dict, ids: list[int]) -> Curriculum:
    """Networks ``ids`` of the protocol in :func:`eval_shared`'s ``shared``, on the unit's device."""
    return make_curriculum(shared["ds"], EvalProtocol(**shared["proto"]), unit_device(shared["device"]),
                           shared["batched"], ids)


@dataclass
class Union:
    """U_i as the stage loop carries it: training-form images, what each stage added, and its lr."""

    x: torch.Tensor  # training-form images of U_i, on the device
    y: torch.Tensor
    keep: torch.Tensor  # mask over ds.x_train of real images later stages may match against
    stored: list[torch.Tensor] = field(default_factory=list)  # each stage's stored tensor (display, export)
    sizes: list[int] = field(default_factory=list)  # training-form images each stage added
    lrs: list[Optional[float]] = field(default_factory=list)  # each stage's learned lr (None: the method learns none)

    @classmethod
    def empty(cls, ds: Dataset, device: torch.device) -> "Union":
        return cls(torch.empty(0, ds.channels, ds.size, ds.size, device=device),
                   torch.empty(0, dtype=torch.long, device=device), torch.ones(len(ds.y_train), dtype=torch.bool))

    def add(self, tensors: dict[str, torch.Tensor], lr: Optional[float]) -> None:
        device = self.x.device
        self.x = torch.cat([self.x, tensors["train_x"].to(device)])
        self.y = torch.cat([self.y, tensors["train_y"].to(device)])
        self.keep = tensors["real_keep"]
        self.stored.append(tensors["stored"])
        self.sizes.append(len(tensors["train_x"]))
        self.lrs.append(lr)

    @property
    def lr(self) -> Optional[float]:
        return self.lrs[-1] if self.lrs else None


def stage_context(cfg: DistillConfig, ds: Dataset, i: int = 1, device: Optional[torch.device] = None,
                  union: Optional[Union] = None, memo: Optional[Memo] = None, report=lambda msg: None,
                  cancel=None, executor: Optional[Executor] = None) -> StageContext:
    """The context a method sees at stage ``i`` after ``union``; with defaults, stage 1 of ``cfg`` on ``ds``."""
    device = device or torch.device("cpu")
    u = union if union is not None else Union.empty(ds, device)
    by_class = [torch.nonzero(u.keep & (ds.y_train == c)).flatten() for c in range(ds.num_classes)]
    lrs = [lr if lr is not None else cfg.eval_lr for lr in u.lrs]  # what a network trains on each union with
    return StageContext(cfg, ds, i, device, u.x, u.y, lrs, list(u.sizes), by_class, memo, report, cancel, executor)


def store_memo(store: Store, keys: Keys, i: int, report) -> Memo:
    """A method's memo at stage ``i``: values live in ``store`` under ``keys.memo(name, i)``."""
    def memo(name, compute, check=None):
        key = keys.memo(name, i)
        hit = store.get(key, (lambda t, m: check(t)) if check is not None else None)
        if hit is not None:
            report(f"{name}: served from cache")
            return hit[0]
        out = compute()
        store.put(key, out, {"kind": name, "stage": i})
        return out
    return memo


def streamed(stage: int, fn, inbox: "queue.Queue[str]") -> Iterator[Event]:
    """Call ``fn()`` in a helper thread and yield what it reports to ``inbox`` *as it reports it*.

    A method's set-up can take most of a stage (MTT trains its experts there: minutes on a GPU, hours
    on a CPU paper preset), and a front end must show "training expert 3/100" then, not afterwards.
    The helper runs the same code on the same generators, so results do not change; a Stop still
    reaches it through the cancel token, and its exception is raised here.
    """
    done, failure = object(), []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)
        finally:
            inbox.put(done)
    worker = threading.Thread(target=target, name=f"pdd-setup-{stage}", daemon=True)
    worker.start()
    while (item := inbox.get()) is not done:
        yield Message(stage, item)
    worker.join()
    if failure:
        raise failure[0]


class Engine:
    """Runs one config against one store. ``run()`` is the streaming entry point."""

    def __init__(self, cfg: DistillConfig, store: Optional[Store] = None, cancel: Optional[CancelToken] = None,
                 executor: Optional[Executor] = None, until: Optional[int] = None):
        """``executor``: where independent units run (default: ``cfg.executor``, made when the run starts).
        ``until``: run a slice, stages 1..until (earlier ones replay from the store)."""
        if until is not None and not 1 <= until <= cfg.stages:
            raise PDDError(f"until={until} is not a stage of this run (1..{cfg.stages})", "give a stage number in that range")
        self.until = until or cfg.stages
        self.cfg = cfg
        self.store = store if store is not None else Store(cfg.cache_dir)
        self.cancel = cancel
        self.executor = executor
        self.computed: list[int] = []
        self.pending: list[str] = []  # notices from the store during run(), shown as messages
        self.lane: Optional[SideLane] = None  # the run's second thread (SideLane), where it has one
        self.warnings: list[tuple[int, str]] = []  # (stage, text) of the stages' health warnings, for the record

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()

    # -- one stage --------------------------------------------------------------------------
    def distil_stage(self, ds: Dataset, keys: Keys, i: int, union: Union, device, phase: str = "stage") -> Iterator[Event]:
        cfg = self.cfg
        msgs: queue.Queue[str] = queue.Queue()
        ctx = stage_context(cfg, ds, i, device, union, store_memo(self.store, keys, i, msgs.put), msgs.put,
                            self.check_cancel, self.executor)
        too_few = [ds.classes[c] for c, idx in enumerate(ctx.real_by_class) if len(idx) < cfg.ipc_at(i)]
        if too_few:
            raise PDDError(f"class(es) {too_few[:5]} have fewer real images than the {cfg.ipc_at(i)} stage {i} adds",
                           "lower IPC, use fewer stages, or add images to those classes")
        method = get_method(cfg.method)(ctx)
        t0 = time.time()
        yield from streamed(i, method.setup, msgs)
        stored = torch.nn.Parameter(method.init_images())
        groups = [{"params": [stored], "lr": cfg.lr_img_at(i)}]
        groups += [{"params": [p], "lr": lr} for p, lr in method.extra_params()]
        opt = SGD(groups, lr=cfg.lr_img_at(i), momentum=0.5)
        frozen_check = union.x.clone()
        note = precision_note("precision", cfg.precision, device, "the distillation")
        if note:
            yield Message(i, note)
        losses = []
        iterations = cfg.iterations_at(i)
        every = max(1, iterations // 100)
        for it in range(iterations):
            self.check_cancel()
            with arithmetic(cfg.precision, device):
                loss = method.loss(stored, it)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise PDDError(f"the {cfg.method} loss became {value} at stage {i}, iteration {it}",
                               "lower lr_img (or lr_lr for MTT), or use fewer syn_steps")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(stored, it)
            if it % every == 0 or it == iterations - 1:
                losses.append([it, value])
                yield Progress(i, it + 1, iterations, value, phase)
        while not msgs.empty():  # anything reported after set-up
            yield Message(i, msgs.get())
        assert torch.equal(frozen_check, union.x), "frozen subsets changed during a stage"
        train_x, train_y = (t.detach() for t in method.decode(stored.detach()))
        lr = method.learned_lr()
        keep = union.keep
        if cfg.filter_easy and i < cfg.stages:
            yield Message(i, "scoring real examples to drop easy ones")
            keep = filter_easy(ds, torch.cat([union.x, train_x]), torch.cat([union.y, train_y]), keep, cfg, i, device,
                               self.executor, self.check_cancel)
        meta = {"stage": i, "lr": lr, "seconds": time.time() - t0, "losses": losses, "method": cfg.method,
                "real_kept": int(keep.sum())}
        self.store.put(keys.stage(i), {"stored": stored.detach(), "labels": method.labels(), "train_x": train_x,
                                       "train_y": train_y, "real_keep": keep}, meta)
        self.computed.append(i)

    def advance(self, ds: Dataset, keys: Keys, i: int, union: Union, device, phase: str = "stage") -> Iterator[Event]:
        """Distil stage ``i`` (or replay it from the store) and add it to ``union``."""
        check = stage_check(ds, keys.cfg, i)
        hit = self.store.get(keys.stage(i), check)
        yield from self.notes(i)
        if phase == "stage":
            yield StageStarted(i, self.cfg.stages, hit is not None)
        if hit is None:
            yield from self.distil_stage(ds, keys, i, union, device, phase)
            hit = self.store.get(keys.stage(i), check)
            if hit is None:  # stored a moment ago and gone: the cache's size limit evicted it
                raise CacheError(f"stage {i} was evicted from the cache right after it was stored: the cache is too "
                                 f"small for this run", "raise PDD_CACHE_GB (or use a larger --cache-dir disk)")
            tensors, meta = hit
        else:
            tensors, meta = hit
            for it, loss in meta["losses"]:
                yield Progress(i, it + 1, self.cfg.iterations_at(i), loss, phase)
        warning = get_method(self.cfg.method).health(self.cfg, meta["losses"], meta["lr"])
        if warning is not None:
            where = "" if phase == "stage" else "the base method alone (P=1): "
            text = f"{where}{warning.removeprefix('warning: ')}"
            self.warnings.append((i, text))
            yield Message(i, f"warning: {text}")
        union.add(tensors, meta["lr"])

    def notes(self, stage: int) -> Iterator[Event]:
        """The store's notices (dropped entries) since the last call, as messages."""
        while self.pending:
            yield Message(stage, self.pending.pop(0))

    def base(self, ds: Dataset, keys: Keys, i: int, device) -> Iterator[Event]:
        """The base method alone (P = 1) at PDD's IPC after stage ``i``, distilled, evaluated and cached
        like any stage. A generator whose return value is (its evaluation networks' accuracies, and those
        of the same images trained for as many epochs as PDD's curriculum, where compared, else None)."""
        beside = self.lane is not None and self.lane.result(("base", i)) is not None  # waits for the side lane
        keys = keys.base(i)
        sub = Engine(keys.cfg, self.store, self.cancel, self.executor)
        what = f"base method alone (P=1, IPC {sub.cfg.ipc})"
        proto = EvalProtocol.from_config(sub.cfg, ds.size)
        # its curriculum: U_1 .. U_i all the base's images (the first step is P = 1's evaluation, the rest
        # train them as long as PDD's curriculum), each step cached; read once: what is missing is computed
        steps = [keys.eval(1)] + ([keys.repeated(j) for j in range(2, i + 1)] if self.cfg.compare_epochs else [])
        done = sub.stored_steps(steps, proto)
        yield from self.notes(i)
        union = Union.empty(ds, device)
        if done:
            yield Message(i, f"{what}: {'computed beside the stages' if beside else 'from cache'}")
        else:
            yield Message(i, f"{what}: distilling and evaluating")
        if len(done) < len(steps) or len(steps) > 1:  # its images (distilled, or replayed from the store)
            for ev in sub.advance(ds, keys, 1, union, device, phase="base"):
                yield replace(ev, stage=i)
            self.warnings += [(i, text) for _, text in sub.warnings]  # said at PDD's stage i
        if len(steps) > 1:
            yield Message(i, f"{what}: trained for {i} x {proto.epochs} epochs, as long as PDD's curriculum")
        accs = [acc for _, acc in sub.evaluated_chain(steps, done, ds, proto, device, union.x, union.y, union.lr)]
        return accs[0], (accs[-1] if len(steps) > 1 else None)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        notice, self.store.notice = self.store.notice, self.pending.append
        own = self.executor is None
        try:
            if own:
                self.executor = make_executor(self.cfg.executor)
            yield from self._run()
        except PDDError as e:  # no executor (Ray missing, say): one line, as any failure before a stage
            yield Failed(str(e), 0)
        finally:
            self.store.notice = notice
            if own and self.executor is not None:
                self.executor.close()
                self.executor = None

    def _run(self) -> Iterator[Event]:
        t0 = time.time()
        stage = 0
        executor = self.executor  # the run's own; a side lane widens it for the run's length
        try:
            asked, self.cfg = self.cfg, resolved(self.cfg)  # auto arithmetic: what this processor has
            cfg = self.cfg
            device = resolve_device(cfg.device)
            tune_allocator()
            torch.manual_seed(cfg.seed)
            ds = dataset_for(cfg)
            keys = Keys.of(cfg, ds)
            yield RunStarted(keys.run, cfg.to_dict(), dataset_info(ds), cfg.stages)
            if (skipped := skipped_files(ds.source)) is not None:  # stage 0: about the data, before any stage
                yield Message(0, f"warning: {skipped}")
            if "auto" in (asked.precision, asked.eval_precision):
                yield Message(0, f"arithmetic: matching in {cfg.precision}, evaluation in {cfg.eval_precision} (auto: "
                                 f"{auto_reason(cfg, device)})")
            if note := precision_note("eval_precision", cfg.eval_precision, device, "the evaluation"):
                yield Message(0, note)
            if asked.dsa_strategy == "auto" and cfg.dsa_strategy != FIELD_STRATEGY:
                yield Message(0, f"augmentation: {cfg.dsa_strategy} (auto: without flip, since a mirrored {ds.name} "
                                 f"image is not its class; set Augmentation to {FIELD_STRATEGY} for the field's)")
            if note := mirror_note(cfg.dsa_ops, find(cfg.dataset).mirrors, ds.name):
                yield Message(0, note)
            proto = EvalProtocol.from_config(cfg, ds.size)
            self.lane = SideLane.start(self, ds, keys, proto, device)
            if self.lane is not None:  # the stage loop's units run in both lanes' threads (LocalExecutor)
                self.executor = LocalExecutor(self.lane.lanes)
            union = Union.empty(ds, device)
            pdd_eval = rand_eval = None
            accuracies = []
            for stage in range(1, self.until + 1):
                t_stage = time.time()
                computed = len(self.computed)
                yield from self.advance(ds, keys, stage, union, device)
                cached = len(self.computed) == computed
                yield StageImages(stage, *union_view(ds, union.stored))
                self.check_cancel()
                (pdd_eval, acc), (rand_eval, racc) = self.evaluated_all(ds, proto, device, [
                    (keys.eval(stage), pdd_eval, union.x, union.y, union.lr),
                    (keys.random(stage), rand_eval, *random_union(ds, cfg, stage), None)])
                bacc, eacc = (yield from self.base(ds, keys, stage, device)) if stage in cfg.base_stages() else (None, None)
                yield from self.notes(stage)
                ev = StageEvaluated(stage, acc, racc, cfg.cum_ipc(stage), bacc, eacc)
                accuracies.append(ev.summary())
                yield ev
                yield StageFinished(stage, cached, time.time() - t_stage, union.lr)
            if self.until < cfg.stages:  # a slice ends with its last stage: the run is not finished
                return
            runs.save(self.store, keys, dataset_info(ds), accuracies,
                      list(dict.fromkeys(f"stage {s}: {text}" for s, text in self.warnings)))
            yield Done(keys.run, accuracies, time.time() - t0, list(self.computed), self.executor.name)
        except Cancelled:
            yield Stopped(stage)
        except PDDError as e:
            yield Failed(str(e), stage or None)
        except torch.cuda.OutOfMemoryError:
            yield Failed("the GPU ran out of memory. Fix: lower syn_steps, batch_syn, batch_real or width.", stage or None,
                         traceback.format_exc())
        except MemoryError:
            yield Failed("the machine ran out of memory. Fix: lower syn_steps, batch_syn, batch_real or width.",
                         stage or None, traceback.format_exc())
        except Exception as e:  # an engine bug: report it in one line, keep the trace for the log
            yield Failed(f"internal error ({type(e).__name__}: {e}). Fix: finished stages are cached; "
                         "please report this with the log's traceback.", stage or None, traceback.format_exc())
        finally:
            if self.lane is not None:
                self.lane.close()
                self.executor = executor
                self.lane = None

    def evaluated(self, key: str, ds: Dataset, proto: EvalProtocol, state: Optional[dict], x, y, lr, device):
        """Curriculum step for one stage, from the store or computed from the previous stage's state."""
        return self.evaluated_all(ds, proto, device, [(key, state, x, y, lr)])[0]

    def stored_steps(self, keys: list[str], proto: EvalProtocol) -> list[tuple[dict, list]]:
        """(state, accuracies) of a curriculum's first steps found in the store, up to the first missing."""
        out: list[tuple[dict, list]] = []
        for key in keys:
            if (hit := self.stored(key, proto)) is None:
                break
            out.append(hit)
        return out

    def stored(self, key: str, proto: EvalProtocol) -> Optional[tuple[dict, list]]:
        """A curriculum step's (state, accuracies) from the store, or None."""
        hit = self.store.get(key, eval_check(proto))
        return None if hit is None else (hit[0], hit[1]["acc"])

    def curriculum_units(self, ds: Dataset, proto: EvalProtocol, device) -> tuple[list[list[int]], Executor, dict]:
        """How a curriculum step runs as units: its network groups, the executor, and what the units share."""
        batched = use_batched(self.cfg.eval_batched, proto, device)
        executor = or_local(self.executor)
        shared = eval_shared(ds, proto, device, batched, **({"cancel": self.check_cancel} if executor.name == "local" else {}))
        return network_groups(batched, proto, device), executor, shared

    def evaluated_chain(self, keys: list[str], done: list[tuple[dict, list]], ds: Dataset, proto: EvalProtocol,
                        device, x, y, lr) -> list[tuple[dict, list]]:
        """(state, accuracies) after each step of a curriculum whose every step trains on (x, y) (the base
        method's images, at P = 1 and trained as long as PDD's curriculum), given its first steps ``done``
        (:meth:`stored_steps`): the rest run as one chain of units per network group (``executor.map_chains``:
        a network's next step starts as soon as its last ends, not when every network's has); the driver
        stores each step as soon as every network has finished it."""
        out = list(done)
        rest = keys[len(out):]
        if not rest:
            return out
        groups, executor, shared = self.curriculum_units(ds, proto, device)
        state = out[-1][0] if out else None
        items = [(networks_of(state, ids), x, y, lr, ids) for ids in groups]

        def store(n: int, parts: list[tuple[dict, list]]) -> None:
            state, acc = joined(parts)
            self.store.put(rest[n], state, {"acc": acc})
            out.append((state, acc))
        map_chains(executor, curriculum_step, items, shared, len(rest), continue_from, self.check_cancel,
                   gpus_for(device), on_step=store)
        return out

    def evaluated_all(self, ds: Dataset, proto: EvalProtocol, device, steps: list[tuple]) -> list[tuple[dict, list]]:
        """(state, accuracies) of each curriculum step ``(key, state, x, y, lr)``: read from the store,
        or computed as independent units on the run's executor (PDD's curriculum and the random
        subset's do not depend on each other); the driver writes the results to the store."""
        out: list = [None] * len(steps)
        todo = []
        for k, (key, *_) in enumerate(steps):
            if self.lane is not None and (done := self.lane.result(key)) is not None:
                out[k] = done
                continue
            if (hit := self.stored(key, proto)) is None:
                todo.append(k)
            else:
                out[k] = hit
        if todo:
            groups, executor, shared = self.curriculum_units(ds, proto, device)
            items = []
            for k in todo:
                _, state, x, y, lr = steps[k]
                items += [(networks_of(state, ids), x, y, lr, ids) for ids in groups]
            done = executor.map(curriculum_step, items, shared, self.check_cancel, gpus=gpus_for(device))
            for n, k in enumerate(todo):
                state, acc = joined(done[n * len(groups):(n + 1) * len(groups)])
                self.store.put(steps[k][0], state, {"acc": acc})
                out[k] = (state, acc)
        return out


class Either:
    """A cancel token set when any of ``tokens`` is (None: never)."""

    def __init__(self, *tokens: Optional[CancelToken]):
        self.tokens = [t for t in tokens if t is not None]

    def is_set(self) -> bool:
        return any(t.is_set() for t in self.tokens)


class SideLane:
    """What no stage waits for, computed in a second thread while the stage loop distils.

    The random curriculum needs only the real data, and the base method alone (P = 1) nothing of PDD's
    stages. On a CPU with two or more torch threads and the local executor, a run splits its threads in
    two: the stage loop keeps half, and this lane takes the other half and computes the random curriculum,
    step by step, then the base method's comparisons, storing each as it finishes. The stage loop takes
    them from here (waiting where the lane is not there yet) and emits its events in the usual order.
    Why: the default run's work is small operators that one thread keeps nearly as busy as two, so two
    lanes of one thread do far more on 2 cores than one lane of two (``bench/speed.py --only lanes``).
    Every computation runs at the lane's thread count in whichever lane, so a run at 2 threads gives the
    numbers of a run at 1 thread without a lane (``tests/test_progressive.py``). The stage loop's independent
    units (MTT's experts, DM's transitioned pool, the evaluation's networks) run on both lanes' threads (``LocalExecutor`` workers),
    with the lane's own thread stepped back (:func:`yield_to_the_stage_loop`): the stage loop is the critical
    path, and the lane has slack.
    """

    def __init__(self, engine: "Engine", restore: int):
        self.restore = restore  # the torch threads to give back when the run ends
        self.lanes = restore // torch.get_num_threads()  # workers for either lane's units
        self.stop = threading.Event()
        # the lane's units too: its workers inherit its lowered priority, so they take the cores the stage loop
        # leaves, all of them once the stage loop waits for the lane (the base comparison's evaluations)
        self.side = Engine(engine.cfg, engine.store, Either(engine.cancel, self.stop), LocalExecutor(self.lanes))
        self.futures: dict[object, Future] = {}
        self.thread: Optional[threading.Thread] = None

    @classmethod
    def start(cls, engine: "Engine", ds: Dataset, keys: Keys, proto: EvalProtocol, device) -> Optional["SideLane"]:
        """The run's lane, working; None where a run has none (a GPU, Ray, a single torch thread, or
        ``PDD_SIDE_LANE=0``)."""
        threads = torch.get_num_threads()
        if device.type != "cpu" or or_local(engine.executor).name != "local" or threads < 2 or not env("PDD_SIDE_LANE"):
            return None
        torch.set_num_threads(threads // 2)
        lane = cls(engine, threads)
        bases = [i for i in engine.cfg.base_stages() if i <= engine.until]
        for key in [keys.random(s) for s in range(1, engine.until + 1)] + [("base", i) for i in bases]:
            lane.futures[key] = Future()
        lane.thread = threading.Thread(target=lane.work, args=(ds, keys, proto, device, engine.until, bases),
                                       name="pdd-side-lane", daemon=True)
        lane.thread.start()
        return lane

    def work(self, ds: Dataset, keys: Keys, proto: EvalProtocol, device, until: int, bases: list[int]) -> None:
        side, cfg = self.side, self.side.cfg
        try:
            yield_to_the_stage_loop()
            state = None
            for s in range(1, until + 1):  # the random curriculum, as the stage loop would compute it
                state, acc = side.evaluated(keys.random(s), ds, proto, state, *random_union(ds, cfg, s), None, device)
                self.futures[keys.random(s)].set_result((state, acc))
            for i in bases:  # the base method's comparisons, stored for the stage loop's Engine.base
                for _ in side.base(ds, keys, i, device):
                    pass
                self.futures[("base", i)].set_result(True)
        except BaseException as e:  # the stage loop meets it where it waits for what is missing
            for f in self.futures.values():
                if not f.done():
                    f.set_exception(e)

    def result(self, key):
        """What the lane computed for ``key`` (waiting for it), or None where the lane does not compute it."""
        f = self.futures.get(key)
        return None if f is None else f.result()

    def close(self) -> None:
        """Stop the lane (at its next epoch or iteration, where it is still working) and give back the threads."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        torch.set_num_threads(self.restore)


def yield_to_the_stage_loop(nice: int = LANE_NICE) -> None:
    """Lower the calling thread's scheduling priority by ``nice`` (Linux; elsewhere nothing).

    The stage loop runs its units (experts, evaluation networks) in both lanes' threads; with the lane at
    the same priority, three threads would share two cores and the stage loop, the run's critical path,
    would get two thirds of them. Lowered, the lane takes what the stage loop leaves (its matching runs one
    thread), which is where it has slack: it finishes long before the last stage needs it."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # no per-thread priorities here: the lane simply competes
        pass


def random_union(ds: Dataset, cfg: DistillConfig, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the random curriculum trains on at ``stage``: each stage j <= ``stage`` adds its own random
    real images (:func:`random_subset`, as many per class as stage j distils), disjoint across stages."""
    parts = [random_subset(ds, cfg.cum_ipc(j - 1), cfg.ipc_at(j), cfg.seed) for j in range(1, stage + 1)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def networks_of(state: Optional[dict], ids: list[int]) -> Optional[dict]:
    """The part of a curriculum's state that networks ``ids`` continue from (``m{k}.*``, ``o{k}.*``)."""
    if state is None:
        return None
    return {name: t for name, t in state.items() if name == "stage" or int(name[1:name.index(".")]) in ids}


def curriculum_step(shared: dict, item: tuple) -> tuple[dict, list]:
    """One curriculum stage for networks ``ids``: they continue from ``state`` on (x, y) for the
    protocol's epochs. A pure function of its inputs (network k's seeds depend on k and the protocol
    alone), so any executor and any split of the networks into units give the same accuracies; the
    state comes back on the CPU."""
    state, x, y, lr, ids = item
    cur = unit_curriculum(shared, ids)
    cur.cancel = shared.get("cancel")  # in this process (the local executor): a Stop ends the step between epochs
    if state is not None:
        cur.load(state)
    acc = cur.train_stage(x, y, lr)
    return {k: v.detach().cpu() for k, v in cur.state().items()}, acc


def joined(parts: list[tuple[dict, list]]) -> tuple[dict, list]:
    """One curriculum step's (state, accuracies) from its network groups' units, in group order."""
    return {name: t for part, _ in parts for name, t in part.items()}, [a for _, part in parts for a in part]


def continue_from(item: tuple, result: tuple) -> tuple:
    """The next curriculum step of a chain (:meth:`Engine.evaluated_chain`): the same networks, continuing
    from the state the last step left, on the same images."""
    _, x, y, lr, ids = item
    return result[0], x, y, lr, ids


def union_view(ds: Dataset, stored: list[torch.Tensor]):
    """The union in stored form, class-major (rows of the UI grid), with the newest stage marked.
    Each stage's block is class-major too, with its own number of images per class."""
    imgs, labs, origin = [], [], []
    for c in range(ds.num_classes):
        for s, block in enumerate(stored, start=1):
            per = len(block) // ds.num_classes
            imgs.append(block[c * per:(c + 1) * per])
            labs += [c] * per
            origin += [s] * per
    origin = np.array(origin)
    return to_uint8(ds, torch.cat(imgs)), np.array(labs), origin == len(stored), list(ds.classes), origin


def run(cfg: DistillConfig, store: Optional[Store] = None, cancel: Optional[CancelToken] = None,
        until: Optional[int] = None) -> Iterator[Event]:
    """Distil ``cfg`` stage by stage, yielding events; see :mod:`pdd_engine.events`.

    ``until``: stop after that stage, without ``Done`` or a run record unless it is the last: how a
    host that lends a GPU per call (ZeroGPU) runs one stage per call, the cache holding the rest."""
    return Engine(cfg, store, cancel, until=until).run()


def distill(cfg: DistillConfig, store: Optional[Store] = None) -> Done:
    """Run to completion; return :class:`Done` or raise :class:`PDDError` with the run's message."""
    last = None
    for ev in run(cfg, store):
        last = ev
    if isinstance(last, Failed):
        raise PDDError(*last.message.split(". Fix: ", 1)) if ". Fix: " in last.message else PDDError(last.message, "see the log")
    return last
