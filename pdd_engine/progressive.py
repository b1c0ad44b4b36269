"""Progressive Dataset Distillation: the stage loop, generic over base methods.

``run(config)`` yields events (:mod:`pdd_engine.events`) while it distils S_1..S_P. Each stage,
its curriculum evaluation and its random baseline are stored under content hashes as soon as they
finish, so a repeated run replays from disk, a longer run reuses the prefix, and a stopped or
killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol

import numpy as np
import torch

from . import __version__
from .cache import Store
from .config import DistillConfig, digest
from .data import Dataset, load_dataset
from .errors import Cancelled, PDDError
from .evaluate import Curriculum, EvalProtocol, make_curriculum, random_subset
from .events import (Done, Event, Failed, Message, Progress, RunStarted, StageEvaluated, StageFinished,
                     StageImages, StageStarted, Stopped)
from .methods import StageContext, get_method
from .training import predict, seed_of


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PDDError("device 'cuda' was requested but no CUDA GPU is available", "use --device cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def dataset_for(cfg: DistillConfig) -> Dataset:
    return load_dataset(cfg.dataset, cfg.data_root, cfg.zca, cfg.image_size, cfg.max_train)


@dataclass(frozen=True)
class Keys:
    """Content-hash keys of everything a run stores."""

    cfg: DistillConfig
    fingerprint: str

    def stage(self, i: int) -> str:
        return "stage:" + digest({"v": __version__, "data": self.fingerprint, "cfg": self.cfg.stage_key_fields(), "i": i})

    def eval(self, i: int) -> str:
        return "eval:" + digest({"stage": self.stage(i), "eval": self.cfg.eval_key_fields(), "arch": self.arch})

    def random(self, i: int) -> str:
        c = self.cfg
        return "random:" + digest({"v": __version__, "data": self.fingerprint, "ipc": c.ipc_per_stage, "seed": c.seed,
                                   "eval": c.eval_key_fields(), "arch": self.arch, "i": i})

    @property
    def arch(self) -> list:
        return [self.cfg.depth, self.cfg.width, self.cfg.norm]

    @property
    def run(self) -> str:
        return "run:" + digest({"last": self.stage(self.cfg.stages), "eval": self.cfg.eval_key_fields(), "p": self.cfg.stages})


def to_uint8(ds: Dataset, x: torch.Tensor) -> np.ndarray:
    return (ds.to_unit(x).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def filter_easy(ctx_ds: Dataset, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, cfg: DistillConfig,
                stage: int, device: torch.device) -> torch.Tensor:
    """PDD's optional step: drop real examples every scorer gets right, keeping each with p=keep_easy.

    Scorers are ``filter_models`` networks trained on U_i with the evaluation protocol.
    Returns the new boolean mask over ``ds.x_train``.
    """
    proto = EvalProtocol.from_config(cfg, ctx_ds.size)
    proto = EvalProtocol(**{**proto.to_dict(), "models": cfg.filter_models, "seed": seed_of(cfg.seed, 31, stage)})
    scorers = Curriculum(ctx_ds, proto, device)
    scorers.train_stage(x, y)
    idx = torch.nonzero(keep).flatten()
    xr, yr = ctx_ds.x_train[idx].to(device), ctx_ds.y_train[idx].to(device)
    easy = torch.ones(len(idx), dtype=torch.bool)
    for net in scorers.nets:
        easy &= (predict(net, xr) == yr).cpu()
    coin = torch.rand(len(idx), generator=torch.Generator().manual_seed(seed_of(cfg.seed, 37, stage)))
    drop = easy & (coin >= cfg.keep_easy)
    new = keep.clone()
    new[idx[drop]] = False
    return new


def stage_context(cfg: DistillConfig, ds: Dataset, i: int = 1, device: Optional[torch.device] = None,
                  frozen_x: Optional[torch.Tensor] = None, frozen_y: Optional[torch.Tensor] = None,
                  frozen_lr: Optional[float] = None, keep: Optional[torch.Tensor] = None, store=None,
                  prefix_key: str = "", report=lambda msg: None, cancel=None) -> StageContext:
    """The context a method sees at stage ``i``; with defaults, stage 1 of ``cfg`` on ``ds``."""
    device = device or torch.device("cpu")
    if frozen_x is None:
        frozen_x = torch.empty(0, ds.channels, ds.size, ds.size, device=device)
        frozen_y = torch.empty(0, dtype=torch.long, device=device)
    keep = torch.ones(len(ds.y_train), dtype=torch.bool) if keep is None else keep
    by_class = [torch.nonzero(keep & (ds.y_train == c)).flatten() for c in range(ds.num_classes)]
    return StageContext(cfg, ds, i, device, frozen_x, frozen_y, frozen_lr or cfg.eval_lr, by_class, store,
                        prefix_key, report, cancel)


class Engine:
    """Runs one config against one store. ``run()`` is the streaming entry point."""

    def __init__(self, cfg: DistillConfig, store: Optional[Store] = None, cancel: Optional[CancelToken] = None):
        self.cfg = cfg
        self.store = store if store is not None else Store(cfg.cache_dir)
        self.cancel = cancel
        self.computed: list[int] = []

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()

    # -- one stage --------------------------------------------------------------------------
    def distil_stage(self, ds: Dataset, keys: Keys, i: int, frozen_x, frozen_y, frozen_lr, keep,
                     device) -> Iterator[Event]:
        cfg = self.cfg
        msgs: list[str] = []
        ctx = stage_context(cfg, ds, i, device, frozen_x, frozen_y, frozen_lr, keep, self.store,
                            keys.stage(i - 1) if i > 1 else "", msgs.append, self.check_cancel)
        too_few = [ds.classes[c] for c, idx in enumerate(ctx.real_by_class) if len(idx) < cfg.ipc_per_stage]
        if too_few:
            raise PDDError(f"class(es) {too_few[:5]} have fewer real images than {cfg.ipc_per_stage} per stage",
                           "lower IPC, use fewer stages, or add images to those classes")
        method = get_method(cfg.method)(ctx)
        t0 = time.time()
        method.setup()
        for m in msgs:
            yield Message(i, m)
        stored = torch.nn.Parameter(method.init_images())
        groups = [{"params": [stored], "lr": cfg.effective_lr_img}]
        groups += [{"params": [p], "lr": lr} for p, lr in method.extra_params()]
        opt = torch.optim.SGD(groups, momentum=0.5)
        frozen_check = frozen_x.clone()
        losses = []
        every = max(1, cfg.iterations // 100)
        for it in range(cfg.iterations):
            self.check_cancel()
            loss = method.loss(stored, it)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise PDDError(f"the {cfg.method} loss became {value} at stage {i}, iteration {it}",
                               "lower lr_img (or lr_lr for MTT), or use fewer syn_steps")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(stored, it)
            if it % every == 0 or it == cfg.iterations - 1:
                losses.append([it, value])
                yield Progress(i, it + 1, cfg.iterations, value)
        assert torch.equal(frozen_check, frozen_x), "frozen subsets changed during a stage"
        train_x, train_y = (t.detach() for t in method.decode(stored.detach()))
        lr = method.learned_lr()
        if cfg.filter_easy and i < cfg.stages:
            yield Message(i, "scoring real examples to drop easy ones")
            keep = filter_easy(ds, torch.cat([frozen_x, train_x]), torch.cat([frozen_y, train_y]), keep, cfg, i, device)
        meta = {"stage": i, "lr": lr, "seconds": time.time() - t0, "losses": losses, "method": cfg.method,
                "real_kept": int(keep.sum())}
        self.store.put(keys.stage(i), {"stored": stored.detach(), "labels": method.labels(), "train_x": train_x,
                                       "train_y": train_y, "real_keep": keep}, meta)
        self.computed.append(i)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        t0 = time.time()
        stage = 0
        try:
            cfg = self.cfg
            device = resolve_device(cfg.device)
            torch.manual_seed(cfg.seed)
            ds = dataset_for(cfg)
            keys = Keys(cfg, ds.fingerprint)
            yield RunStarted(keys.run, cfg.to_dict(), dataset_info(ds), cfg.stages)
            proto = EvalProtocol.from_config(cfg, ds.size)
            frozen_x = torch.empty(0, ds.channels, ds.size, ds.size, device=device)
            frozen_y = torch.empty(0, dtype=torch.long, device=device)
            stored_union: list[torch.Tensor] = []
            keep = torch.ones(len(ds.y_train), dtype=torch.bool)
            lr = None
            pdd_eval = rand_eval = None
            rand_x, rand_y = [], []
            accuracies = []
            for stage in range(1, cfg.stages + 1):
                t_stage = time.time()
                cached = keys.stage(stage) in self.store
                yield StageStarted(stage, cfg.stages, cached)
                if not cached:
                    yield from self.distil_stage(ds, keys, stage, frozen_x, frozen_y, lr, keep, device)
                tensors, meta = self.store.get(keys.stage(stage))
                if cached:
                    for it, loss in meta["losses"]:
                        yield Progress(stage, it + 1, cfg.iterations, loss)
                frozen_x = torch.cat([frozen_x, tensors["train_x"].to(device)])
                frozen_y = torch.cat([frozen_y, tensors["train_y"].to(device)])
                stored_union.append(tensors["stored"])
                keep, lr = tensors["real_keep"], meta["lr"]
                yield StageImages(stage, *union_view(ds, stored_union, cfg))
                self.check_cancel()
                pdd_eval, acc = self.evaluated(keys.eval(stage), ds, proto, pdd_eval, frozen_x, frozen_y, lr, device)
                rx, ry = random_subset(ds, stage, cfg.ipc_per_stage, cfg.seed)
                rand_x.append(rx)
                rand_y.append(ry)
                rand_eval, racc = self.evaluated(keys.random(stage), ds, proto, rand_eval, torch.cat(rand_x),
                                                 torch.cat(rand_y), None, device)
                ev = StageEvaluated(stage, acc, racc, cfg.ipc_per_stage * stage)
                accuracies.append({"stage": stage, "ipc": ev.images_per_class, "mean": ev.mean, "std": ev.std,
                                   "random_mean": ev.random_mean, "random_std": ev.random_std})
                yield ev
                yield StageFinished(stage, cached, time.time() - t_stage, lr)
            self.store.put(keys.run, {}, {"config": cfg.to_dict(), "dataset": dataset_info(ds), "accuracies": accuracies,
                                          "finished": time.time(), "version": __version__})
            yield Done(keys.run, accuracies, time.time() - t0, list(self.computed))
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

    def evaluated(self, key: str, ds: Dataset, proto: EvalProtocol, state: Optional[dict], x, y, lr, device):
        """Curriculum step for one stage, from the store or computed from the previous stage's state."""
        hit = self.store.get(key)
        if hit is not None:
            tensors, meta = hit
            return tensors, meta["acc"]
        cur = make_curriculum(ds, proto, device, self.cfg.eval_batched)
        if state is not None:
            cur.load(state)
        acc = cur.train_stage(x, y, lr)
        new_state = cur.state()
        self.store.put(key, new_state, {"acc": acc})
        return new_state, acc


def union_view(ds: Dataset, stored: list[torch.Tensor], cfg: DistillConfig):
    """The union in stored form, class-major (rows of the UI grid), with the newest stage marked."""
    per = cfg.ipc_per_stage
    imgs, labs, new = [], [], []
    for c in range(ds.num_classes):
        for s, block in enumerate(stored):
            imgs.append(block[c * per:(c + 1) * per])
            labs += [c] * per
            new += [s == len(stored) - 1] * per
    return to_uint8(ds, torch.cat(imgs)), np.array(labs), np.array(new), list(ds.classes)


def dataset_info(ds: Dataset) -> dict[str, Any]:
    return {"name": ds.name, "classes": ds.classes, "channels": ds.channels, "size": ds.size,
            "train": len(ds.y_train), "test": len(ds.y_test), "source": ds.source, "fingerprint": ds.fingerprint}


def run(cfg: DistillConfig, store: Optional[Store] = None, cancel: Optional[CancelToken] = None) -> Iterator[Event]:
    """Distil ``cfg`` stage by stage, yielding events; see :mod:`pdd_engine.events`."""
    return Engine(cfg, store, cancel).run()


def distill(cfg: DistillConfig, store: Optional[Store] = None) -> Done:
    """Run to completion; return :class:`Done` or raise :class:`PDDError` with the run's message."""
    last = None
    for ev in run(cfg, store):
        last = ev
    if isinstance(last, Failed):
        raise PDDError(*last.message.split(". Fix: ", 1)) if ". Fix: " in last.message else PDDError(last.message, "see the log")
    return last
