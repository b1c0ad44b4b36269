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
    stage: int  # 0: about the data or the run, before any stage
    text: str

    @property
    def where(self) -> str:
        return f"stage {self.stage}" if self.stage else "data"


@dataclass
class Progress:
    stage: int
    iteration: int
    iterations: int
    loss: float
    phase: str = "stage"  # "stage": PDD's stage; "base": the base method alone (P = 1) for comparison


@dataclass
class StageImages:
    stage: int
    images: np.ndarray  # (N, H, W, C) uint8, class-major, U_i in stored form
    labels: np.ndarray  # (N,)
    new: np.ndarray  # (N,) bool: True for this stage's images, False for frozen ones
    classes: list[str]
    origin: Optional[np.ndarray] = None  # (N,) the stage (1-based) each image was distilled in


@dataclass
class StageEvaluated:
    stage: int
    acc: list[float]  # per evaluation network, after training on U_1..U_i
    random_acc: list[float]  # same protocol on a random real subset of the same size
    images_per_class: int  # cumulative: what U_i holds per class
    base_acc: Optional[list[float]] = None  # the base method alone (P = 1) at the same IPC, where computed
    # the base method's P = 1 images trained for the same total epochs as PDD's curriculum (stage x
    # eval_epochs), where compared and stage > 1: what more epochs alone give the base's own images
    base_epochs_acc: Optional[list[float]] = None

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

    @property
    def base_mean(self) -> Optional[float]:
        return None if self.base_acc is None else float(np.mean(self.base_acc))

    @property
    def base_std(self) -> Optional[float]:
        return None if self.base_acc is None else float(np.std(self.base_acc))

    @property
    def base_epochs_mean(self) -> Optional[float]:
        return None if self.base_epochs_acc is None else float(np.mean(self.base_epochs_acc))

    @property
    def base_epochs_std(self) -> Optional[float]:
        return None if self.base_epochs_acc is None else float(np.std(self.base_epochs_acc))

    def summary(self) -> dict[str, Any]:
        """The per-stage record of run results and the CLI's JSON (None where the base was not run)."""
        return {"stage": self.stage, "ipc": self.images_per_class, "mean": self.mean, "std": self.std,
                "random_mean": self.random_mean, "random_std": self.random_std,
                "base_mean": self.base_mean, "base_std": self.base_std,
                "base_epochs_mean": self.base_epochs_mean, "base_epochs_std": self.base_epochs_std}


@dataclass
class StageFinished:
    stage: int
    cached: bool
    seconds: float
    learned_lr: Optional[float] = None


@dataclass
class Done:
    run_key: str
    accuracies: list[dict[str, Any]]  # per stage: StageEvaluated.summary()
    seconds: float
    computed_stages: list[int] = field(default_factory=list)
    executor: str = "local"  # where the computed stages' independent units ran


@dataclass
class Failed:
    message: str  # one line: the problem and the fix
    stage: Optional[int] = None
    detail: str = ""  # traceback for logs, never shown as the message


@dataclass
class Stopped:
    stage: int  # the stage that was running; stages before it are cached
    message: str = "stopped; finished stages are cached and a new run resumes from them"


@dataclass
class Exported:
    """A finished run's bundle and per-stage archives are on disk (sent before Done by front ends
    that export in the engine's process, such as the studio's workers); ``error`` if that failed."""

    path: Optional[str]
    stage_paths: list[str] = field(default_factory=list)
    error: str = ""


Event = (RunStarted | StageStarted | Message | Progress | StageImages | StageEvaluated | StageFinished | Exported | Done
         | Failed | Stopped)
