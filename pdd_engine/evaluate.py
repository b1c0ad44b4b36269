"""The curriculum evaluation protocol of PDD, and the random-real-subset baseline.

N fresh networks are trained on U_1 for E epochs, then continue (optimizer state carried) on U_2,
... U_P; test accuracy is read after every stage. The state between stages is a plain tensor dict,
so the evaluation of stage i+1 can resume from a cached stage i.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import copy

import torch
import torch.nn as nn

from . import models
from .augment import DSA
from .config import DistillConfig
from .data import Dataset
from .device import arithmetic
from .errors import PDDError
from .strategy import FIELD_STRATEGY, strategy_ops
from .training import (SGD, accuracy, make_sgd, seed_of, stacked_forward, train_epochs,  # noqa: F401
                       train_together, trains_together)


# Architectures front ends offer for cross-architecture evaluation (any parse_arch name works).
ARCHITECTURES = ("convnet", "convnet-d4", "convnet-w64", "convnet-d3-w128", "resnet", "resnet-w16")


def parse_arch(arch: str) -> dict:
    """``convnet``, ``convnet-d4``, ``convnet-w64``, ``convnet-d4-w128``, ``resnet``, ``resnet-w16``,
    optionally ending in a norm (``-instance``, ``-batch``, ``-none``)."""
    parts = arch.lower().split("-")
    spec = {"family": parts[0]}
    for p in parts[1:]:
        if p[:1] in "dw" and p[1:].isdigit():
            spec["depth" if p[0] == "d" else "width"] = int(p[1:])
        elif p in ("instance", "batch", "none"):
            spec["norm"] = p
        else:
            raise ValueError(p)
    if spec["family"] not in ("convnet", "resnet"):
        raise ValueError(arch)
    if spec["family"] == "resnet":
        spec.setdefault("norm", "batch")  # the field's ResNet-18BN convention
    return spec


def arch_changes(arch: str) -> dict:
    """:func:`parse_arch`, or a one-line PDDError that lists the names front ends offer."""
    try:
        return parse_arch(arch)
    except ValueError:
        raise PDDError(f"unknown architecture '{arch}'",
                       f"use one of {', '.join(ARCHITECTURES)} (depth -dN, width -wN, norm -instance/-batch/-none)") from None


@dataclass(frozen=True)
class EvalProtocol:
    epochs: int = 300  # per stage
    models: int = 5
    lr: float = 0.01  # used where a stage carries no learned lr
    batch: int = 256
    dsa_strategy: str = FIELD_STRATEGY
    seed: int = 0
    family: str = "convnet"
    depth: int = 3
    width: int = 32
    norm: str = "instance"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    precision: str = "float32"  # the arithmetic of training and test pass (DistillConfig.eval_precision)

    @classmethod
    def from_config(cls, c: DistillConfig, size: int) -> "EvalProtocol":
        """The protocol of a config, for inputs of ``size`` pixels (which fixes an auto depth)."""
        return cls(c.eval_epochs, c.eval_models, c.eval_lr, c.eval_batch,
                   c.augmentation if c.eval_dsa else "none", c.seed, "convnet", c.depth_for(size), c.width, c.norm,
                   precision=c.eval_precision)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def aug(self) -> DSA:
        return DSA(strategy_ops(self.dsa_strategy))


class Curriculum:
    """N networks and their optimisers, trained stage after stage.

    Network k's initialisation, minibatch order and augmentation draws depend only on k and the
    protocol, so any subset ``ids`` of the N networks can be trained on its own (another process,
    another machine) and gives exactly those networks of the whole curriculum."""

    def __init__(self, ds: Dataset, proto: EvalProtocol, device: torch.device, ids: Optional[Sequence[int]] = None):
        self.ds, self.proto, self.device = ds, proto, device
        self.ids = list(range(proto.models) if ids is None else ids)
        self.nets: list[nn.Module] = []
        self.opts: list[SGD] = []
        for k in self.ids:
            net = models.build_model(ds.channels, ds.num_classes, ds.size, proto.depth, proto.width, proto.norm,
                                     proto.family, seed=seed_of(proto.seed, 1000 + k)).to(device)
            self.nets.append(net)
            self.opts.append(make_sgd(net, proto.lr, proto.momentum, proto.weight_decay))
        self.stage = 0
        self.cancel: Optional[Callable[[], None]] = None  # called between epochs: raises Cancelled to stop

    def between_epochs(self, epoch: int) -> None:
        if self.cancel is not None:
            self.cancel()

    def train_stage(self, x: torch.Tensor, y: torch.Tensor, lr: Optional[float] = None) -> list[float]:
        """Continue every network on (x, y) for ``epochs``; return test accuracies."""
        self.fit(x, y, lr)
        return self.test_accuracy()

    def fit(self, x: torch.Tensor, y: torch.Tensor, lr: Optional[float] = None) -> None:
        """Continue every network on (x, y) for ``epochs`` (the next stage), without a test pass."""
        self.stage += 1
        x, y = x.to(self.device), y.to(self.device)
        with self.arithmetic():
            for k, net, opt in zip(self.ids, self.nets, self.opts):
                train_epochs(net, x, y, self.proto.epochs, opt, lr or self.proto.lr, self.proto.batch, self.proto.aug,
                             seed_of(self.proto.seed, 2000 + k, self.stage), on_epoch=self.between_epochs)

    def arithmetic(self):
        """The context the networks train and predict in: the protocol's precision (float32, or bf16 autocast)."""
        return arithmetic(self.proto.precision, self.device)

    def test_accuracy(self) -> list[float]:
        """Each network's accuracy on the test split."""
        xt, yt = self.ds.x_test.to(self.device), self.ds.y_test.to(self.device)
        with self.arithmetic():
            return [accuracy(net, xt, yt) for net in self.nets]

    def state(self) -> dict[str, torch.Tensor]:
        out = {"stage": torch.tensor(self.stage)}
        for k, net, opt in zip(self.ids, self.nets, self.opts):
            out.update({f"m{k}.{n}": t for n, t in net.state_dict().items()})
            for i, p in enumerate(net.parameters()):
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"o{k}.{i}"] = buf
        return out

    def load(self, state: dict[str, torch.Tensor]) -> "Curriculum":
        self.stage = int(state["stage"])
        for k, net, opt in zip(self.ids, self.nets, self.opts):
            net.load_state_dict({n[len(f"m{k}."):]: t for n, t in state.items() if n.startswith(f"m{k}.")})
            for i, p in enumerate(net.parameters()):
                if f"o{k}.{i}" in state:
                    opt.state[p]["momentum_buffer"] = state[f"o{k}.{i}"].to(self.device).clone()
        return self


class BatchedCurriculum(Curriculum):
    """The same curriculum with the N networks trained together (``torch.func`` + ``vmap``).

    Each network keeps its own initialisation, minibatch order and augmentation draws (the same
    generators as :class:`Curriculum`), and SGD updates are elementwise, so the result matches
    the sequential path up to floating-point summation order, in one batched call per step.
    """

    def __init__(self, ds: Dataset, proto: EvalProtocol, device: torch.device, ids: Optional[Sequence[int]] = None):
        super().__init__(ds, proto, device, ids)
        self.base = copy.deepcopy(self.nets[0]).to("meta")
        self.params, self.buffers = torch.func.stack_module_state(self.nets)
        self.opt = make_sgd(self.params.values(), proto.lr, proto.momentum, proto.weight_decay)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return stacked_forward(self.base, self.params, self.buffers, x)

    def fit(self, x: torch.Tensor, y: torch.Tensor, lr: Optional[float] = None) -> None:
        self.stage += 1
        p = self.proto
        train_together(self.base, self.params, self.buffers, x.to(self.device), y.to(self.device), p.epochs, self.opt,
                       lr or p.lr, p.batch, p.aug, [seed_of(p.seed, 2000 + k, self.stage) for k in self.ids],
                       arithmetic=self.arithmetic, on_epoch=self.between_epochs)

    def test_accuracy(self) -> list[float]:
        xt, yt = self.ds.x_test.to(self.device), self.ds.y_test.to(self.device)
        n = len(self.ids)
        correct = torch.zeros(n, device=self.device)
        with torch.no_grad(), self.arithmetic():
            for i in range(0, len(xt), 1024):
                xb = xt[i:i + 1024]
                correct += (self.logits(xb.expand(n, *xb.shape)).argmax(-1) == yt[i:i + 1024]).sum(1)
        return (correct / len(yt)).tolist()

    def state(self) -> dict[str, torch.Tensor]:
        out = {"stage": torch.tensor(self.stage)}
        for i, (name, stacked) in enumerate(self.params.items()):
            buf = self.opt.state.get(stacked, {}).get("momentum_buffer")
            for j, k in enumerate(self.ids):
                out[f"m{k}.{name}"] = stacked[j].detach()
                if buf is not None:
                    out[f"o{k}.{i}"] = buf[j]
        return out

    def load(self, state: dict[str, torch.Tensor]) -> "BatchedCurriculum":
        self.stage = int(state["stage"])
        with torch.no_grad():
            for i, (name, stacked) in enumerate(self.params.items()):
                for j, k in enumerate(self.ids):
                    stacked[j].copy_(state[f"m{k}.{name}"])
                if f"o{self.ids[0]}.{i}" in state:
                    self.opt.state[stacked]["momentum_buffer"] = torch.stack(
                        [state[f"o{k}.{i}"] for k in self.ids]).to(self.device).clone()
        return self


def use_batched(batched: Optional[bool], proto: EvalProtocol, device: torch.device,
                count: Optional[int] = None) -> bool:
    """:func:`trains_together` for the protocol's networks (``count``: how many, default all)."""
    return trains_together(batched, proto.norm, proto.models if count is None else count, device)


def make_curriculum(ds: Dataset, proto: EvalProtocol, device: torch.device, batched: Optional[bool] = None,
                    ids: Optional[Sequence[int]] = None) -> Curriculum:
    """The batched path or the sequential one (:func:`use_batched`), for networks ``ids`` (default all)."""
    if use_batched(batched, proto, device, None if ids is None else len(ids)):
        return BatchedCurriculum(ds, proto, device, ids)
    return Curriculum(ds, proto, device, ids)


def network_groups(batched: Optional[bool], proto: EvalProtocol, device: torch.device) -> list[list[int]]:
    """How a curriculum's N networks split into independent units: one unit for all where they are
    trained together (vmap), else one unit per network (an executor can spread them)."""
    if use_batched(batched, proto, device):
        return [list(range(proto.models))]
    return [[k] for k in range(proto.models)]


def random_subset(ds: Dataset, start: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``start`` to ``start + count`` of a fixed random order of each class: a stage's random
    images (start: images per class of the earlier stages), disjoint across stages, and together
    exactly P = 1's random subset of the same total."""
    xs, ys = [], []
    for c, idx in enumerate(ds.indices_by_class()):
        order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed_of(seed, 99, c)))]
        pick = order[start:start + count]
        xs.append(ds.x_train[pick])
        ys.append(torch.full((len(pick),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def evaluate_curriculum(ds: Dataset, stages: list[tuple[torch.Tensor, torch.Tensor, Optional[float]]],
                        proto: EvalProtocol, device: torch.device, batched: Optional[bool] = None) -> list[list[float]]:
    """Accuracies after each stage for the union sets ``stages`` = [(x_U1, y_U1, lr_1), ...]."""
    cur = make_curriculum(ds, proto, device, batched)
    return [cur.train_stage(x, y, lr) for x, y, lr in stages]
