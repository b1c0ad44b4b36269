"""Typed events that :func:`pdd_engine.run` yields, so a CLI or a UI can stream a run.

Events carry plain Python and numpy values only (no tensors, no engine objects), so they cross
process boundaries cheaply and a UI can render them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class RunStarted:
    run_key: str
    config: dict[str, Any]
    dataset: dict[str, Any]
    stages: int


@dataclass
class StageStarted:
    stage: int
    stages: int
    cached: bool


@dataclass
class Message:
    stage: int
    text: str


@dataclass
class Progress:
    stage: int
    iteration: int
    iterations: int
    loss: float


@dataclass
class StageImages:
    stage: int
    images: np.ndarray  # (N, H, W, C) uint8, class-major, U_i in stored form
    labels: np.ndarray  # (N,)
    new: np.ndarray  # (N,) bool: True for this stage's images, False for frozen ones
    classes: list[str]


@dataclass
class StageEvaluated:
    stage: int
    acc: list[float]  # per evaluation network, after training on U_1..U_i
    random_acc: list[float]  # same protocol on a random real subset of the same size
    images_per_class: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.acc))

    @property
    def std(self) -> float:
        return float(np.std(self.acc))

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_acc))

    @property
    def random_std(self) -> float:
        return float(np.std(self.random_acc))


@dataclass
class StageFinished:
    stage: int
    cached: bool
    seconds: float
    learned_lr: Optional[float] = None


@dataclass
class Done:
    run_key: str
    accuracies: list[dict[str, float]]  # per stage: mean, std, random_mean, random_std
    seconds: float
    computed_stages: list[int] = field(default_factory=list)


@dataclass
class Failed:
    message: str  # one line: the problem and the fix
    stage: Optional[int] = None
    detail: str = ""  # traceback for logs, never shown as the message


@dataclass
class Stopped:
    stage: int  # the stage that was running; stages before it are cached
    message: str = "stopped; finished stages are cached and a new run resumes from them"


Event = RunStarted | StageStarted | Message | Progress | StageImages | StageEvaluated | StageFinished | Done | Failed | Stopped
