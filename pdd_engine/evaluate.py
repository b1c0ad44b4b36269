"""The curriculum evaluation protocol of PDD, and the random-real-subset baseline.

N fresh networks are trained on U_1 for E epochs, then continue (optimizer state carried) on U_2,
... U_P; test accuracy is read after every stage. The state between stages is a plain tensor dict,
so the evaluation of stage i+1 can resume from a cached stage i.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from .augment import DSA
from .config import DistillConfig
from .data import Dataset
from .models import build_model
from .training import accuracy, make_sgd, seed_of, train_epochs


@dataclass(frozen=True)
class EvalProtocol:
    epochs: int = 300  # per stage
    models: int = 5
    lr: float = 0.01  # used where a stage carries no learned lr
    batch: int = 256
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0
    family: str = "convnet"
    depth: int = 3
    width: int = 32
    norm: str = "instance"
    momentum: float = 0.9
    weight_decay: float = 5e-4

    @classmethod
    def from_config(cls, c: DistillConfig, size: int) -> "EvalProtocol":
        """The protocol of a config, for inputs of ``size`` pixels (which fixes an auto depth)."""
        return cls(c.eval_epochs, c.eval_models, c.eval_lr, c.eval_batch,
                   c.dsa_strategy if c.eval_dsa else "none", c.seed, "convnet", c.depth_for(size), c.width, c.norm)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def aug(self) -> DSA:
        return DSA(() if self.dsa_strategy in ("", "none") else self.dsa_strategy.split("_"))


class Curriculum:
    """N networks and their optimisers, trained stage after stage."""

    def __init__(self, ds: Dataset, proto: EvalProtocol, device: torch.device):
        self.ds, self.proto, self.device = ds, proto, device
        self.nets: list[nn.Module] = []
        self.opts: list[torch.optim.SGD] = []
        for k in range(proto.models):
            torch.manual_seed(seed_of(proto.seed, 1000 + k))
            net = build_model(ds.channels, ds.num_classes, ds.size, proto.depth, proto.width, proto.norm,
                              proto.family).to(device)
            self.nets.append(net)
            self.opts.append(make_sgd(net, proto.lr, proto.momentum, proto.weight_decay))
        self.stage = 0

    def train_stage(self, x: torch.Tensor, y: torch.Tensor, lr: Optional[float] = None) -> list[float]:
        """Continue every network on (x, y) for ``epochs``; return test accuracies."""
        self.stage += 1
        x, y = x.to(self.device), y.to(self.device)
        xt, yt = self.ds.x_test.to(self.device), self.ds.y_test.to(self.device)
        accs = []
        for k, (net, opt) in enumerate(zip(self.nets, self.opts)):
            train_epochs(net, x, y, self.proto.epochs, opt, lr or self.proto.lr, self.proto.batch, self.proto.aug,
                         seed_of(self.proto.seed, 2000 + k, self.stage))
            accs.append(accuracy(net, xt, yt))
        return accs

    def state(self) -> dict[str, torch.Tensor]:
        out = {"stage": torch.tensor(self.stage)}
        for k, (net, opt) in enumerate(zip(self.nets, self.opts)):
            out.update({f"m{k}.{n}": t for n, t in net.state_dict().items()})
            for i, p in enumerate(net.parameters()):
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"o{k}.{i}"] = buf
        return out

    def load(self, state: dict[str, torch.Tensor]) -> "Curriculum":
        self.stage = int(state["stage"])
        for k, (net, opt) in enumerate(zip(self.nets, self.opts)):
            net.load_state_dict({n[len(f"m{k}."):]: t for n, t in state.items() if n.startswith(f"m{k}.")})
            for i, p in enumerate(net.parameters()):
                if f"o{k}.{i}" in state:
                    opt.state[p]["momentum_buffer"] = state[f"o{k}.{i}"].to(self.device).clone()
        return self


def random_subset(ds: Dataset, stage: int, ipc_per_stage: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage ``stage``'s slice of a fixed random order of each class: disjoint across stages."""
    xs, ys = [], []
    for c, idx in enumerate(ds.indices_by_class()):
        order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed_of(seed, 99, c)))]
        pick = order[(stage - 1) * ipc_per_stage: stage * ipc_per_stage]
        xs.append(ds.x_train[pick])
        ys.append(torch.full((len(pick),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def evaluate_curriculum(ds: Dataset, stages: list[tuple[torch.Tensor, torch.Tensor, Optional[float]]],
                        proto: EvalProtocol, device: torch.device) -> list[list[float]]:
    """Accuracies after each stage for the union sets ``stages`` = [(x_U1, y_U1, lr_1), ...]."""
    cur = Curriculum(ds, proto, device)
    return [cur.train_stage(x, y, lr) for x, y, lr in stages]
