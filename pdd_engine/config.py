"""One typed, validated config for a distillation run, and the presets.

The fields every method shares are flat; a method's own hyper-parameters are its registered
``Params`` dataclass in ``params`` (``cfg.params.syn_steps`` for MTT). Front ends speak flat names
(``--syn-steps``, one control per field): :meth:`DistillConfig.make` routes each name to its place and
refuses a setting of another method with a fix. Which fields feed which cached artefact is declared
in :mod:`pdd_engine.keys`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping, Optional, get_args

from .errors import ConfigError

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
Norm = Literal["instance", "batch", "none"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["float32", "bfloat16"]

# One line per shared field on what it does, for the CLI's help and the studio's controls (a method's
# own settings carry theirs in their ``param``).
HINTS = {
    "stages": "P: how many small sets are distilled one after another, each frozen before the next",
    "ipc": "synthetic images per class in the end, over all stages",
    "stage_ipc": "images per class each stage adds, e.g. 6,4; empty splits IPC evenly",
    "iterations": "image updates per stage (the base method's budget)",
    "lr_img": "step size of the synthetic pixels",
    "width": "channels of the ConvNet used to distil and to evaluate",
    "depth": "ConvNet blocks (conv, norm, ReLU, pool)",
    "image_size": "resize every image to this many pixels per side (set it for mixed-size uploads)",
    "eval_epochs": "epochs each evaluation network trains per stage",
    "eval_models": "evaluation networks per stage: the ± is their std",
    "seed": "one seed for everything: the same seed gives the same result",
    "transition": "where each stage's matching networks start (chain: the paper's)",
    "transition_epochs": "epochs a network trains on each earlier stage before it is matched",
    "filter_easy": "drop the real examples networks already classify well before each next stage",
    "zca": "whiten images (ZCA), as the field does for CIFAR",
    "device": "auto: CUDA when present, else CPU",
    "precision": "the distillation's matching in float32, or under bfloat16 autocast (faster where the "
                 "processor has bf16 instructions; the evaluation has its own arithmetic setting)",
    "eval_precision": "the evaluation networks' training and test pass in float32 (the field's protocol), or "
                      "under bfloat16 autocast (faster where the processor has bf16 instructions)",
    "executor": "where a stage's independent units (experts, evaluation networks, scorers) run; same results",
    "compare_base": "also distil the base method alone (P=1) at the same IPC, to see PDD's gain",
    "compare_epochs": "also train the base method's P=1 images for as many epochs as PDD's curriculum (P x the "
                      "evaluation epochs): did the stages make better images, or only train longer?",
}


@dataclass(frozen=True)
class DistillConfig:
    # what to distil
    dataset: str = "digits"
    method: str = "dm"
    # the method's own hyper-parameters (its registered Params dataclass; None: its defaults)
    params: Any = None
    stages: int = 2  # cpu-quick: the measured best PDD row on digits within 3 minutes (README, Results)
    ipc: int = 10
    # images per class each stage adds, e.g. (6, 4): more in the first stage, as the paper's ablation
    # tries; None splits IPC evenly. Its length is P and its sum is IPC ("6,4" on the CLI and the page)
    stage_ipc: Optional[tuple[int, ...]] = None
    iterations: int = 200
    seed: int = 0
    # synthetic images
    lr_img: Optional[float] = None
    init: Literal["real", "noise"] = "real"
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False
    image_size: Optional[int] = None
    max_train: Optional[int] = None  # stratified subset of the real training set (seed 0)
    # network
    depth: Optional[int] = None  # None: the field's choice for the input size (see auto_depth)
    width: int = 32
    norm: Norm = "instance"
    # PDD transition: where stage i's matching networks start. "chain" (the official code): one
    # network trained on U_1, then U_2, ... U_{i-1}, transition_epochs each; "fresh": a new network
    # trained on U_{i-1} alone.
    transition: Literal["chain", "fresh"] = "chain"
    transition_epochs: int = 50
    # easy-example filtering between stages (PDD, optional)
    filter_easy: bool = False
    keep_easy: float = 0.2
    filter_models: int = 3
    # evaluation (curriculum: eval_epochs on U_1, then on U_2, ... with optimizer state carried)
    eval_epochs: int = 300
    eval_models: int = 3  # cpu-quick: as in the benchmark row it was chosen by
    eval_lr: float = 0.01
    eval_batch: int = 256
    eval_dsa: bool = True
    # the evaluation networks trained together (vmap) or one after another; None: batched on a GPU,
    # on a CPU only for small networks (evaluate.BATCHED_CPU_MAX_WORK, bench/speed.py --only eval_widths).
    # The same results either way, up to floating-point summation order (not in any cache key)
    eval_batched: Optional[bool] = None
    # the arithmetic of the evaluation (its networks' training and test pass; the easy-example scorers too):
    # float32, the field's protocol, or bfloat16 autocast, faster on processors with bf16 instructions at
    # the same accuracy (README, "bfloat16 against float32"). Accuracies differ run to run, so it is in the
    # evaluation keys; it changes no distilled image.
    eval_precision: Precision = "float32"
    # the base method alone (P = 1) at the same IPC, beside PDD: at the final stage, every stage, or off
    compare_base: Literal["final", "every", "off"] = "final"
    # beside it, the base method's P = 1 images trained for the curriculum's total epochs (i x eval_epochs
    # after stage i: the same curriculum with each union replaced by those images), where i > 1
    compare_epochs: bool = True
    # where it runs
    device: Device = "auto"
    # the arithmetic of the distillation's matching (each method's loss, under torch.autocast): bfloat16
    # is faster on processors with bf16 instructions (README, "Speed and memory"), and the images it gives
    # differ, so it is in the stage keys. Transitions and experts run in float32; the evaluation's
    # arithmetic is eval_precision.
    precision: Precision = "float32"
    # where a stage's independent units (MTT's experts) run: local (this process) or ray (a cluster);
    # None: PDD_EXECUTOR, else local. Results are the same either way.
    executor: Optional[Literal["local", "ray"]] = None
    data_root: Optional[str] = None
    cache_dir: Optional[str] = None
    max_memory_gb: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", method_params(self.method, self.params))
        object.__setattr__(self, "stage_ipc", parse_stage_ipc(self.stage_ipc))
        validate(self)

    @classmethod
    def make(cls, values: Mapping[str, Any], *, other_methods: Literal["error", "drop"] = "error") -> "DistillConfig":
        """A config from flat names, as front ends and presets give them: shared fields go to the
        config, the chosen method's hyper-parameters to ``params``. A hyper-parameter of another method
        is an error naming the fix (``other_methods="drop"`` ignores it: a preset's values for a method
        the user switched away from)."""
        from .methods import get_method, owners
        own = {f.name for f in fields(cls)} - {"params"}
        method = values.get("method", cls.method)
        mine = set(get_method(method).Params.names())
        common = {k: v for k, v in values.items() if k in own}
        params = dict(values.get("params") or {})
        for name, value in values.items():
            if name in own or name == "params":
                continue
            if name in mine:
                params[name] = value
            elif owners(name):
                if other_methods == "error":
                    raise ConfigError(f"{name} is a setting of {', '.join(owners(name))}, not of {method}",
                                      f"leave {name} out, or choose method {owners(name)[0]}")
            else:
                raise ConfigError(f"unknown config field '{name}'",
                                  f"use only {', '.join(sorted(own | mine))}")
        return cls(**common, params=params)

    def flat(self) -> dict[str, Any]:
        """Every value under its front-end name (shared fields, then the method's hyper-parameters)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        return {**out, **self.params.to_dict()}

    # -- derived -------------------------------------------------------------------------
    @property
    def ipcs(self) -> tuple[int, ...]:
        """Images per class each stage adds: the schedule, or IPC split evenly over the P stages."""
        return self.stage_ipc or (self.ipc // self.stages,) * self.stages

    def ipc_at(self, stage: int) -> int:
        """Images per class stage ``stage`` (1-based) adds."""
        return self.ipcs[stage - 1]

    def cum_ipc(self, stage: int) -> int:
        """Images per class in the union U_stage (0 for stage 0)."""
        return sum(self.ipcs[:stage])

    def depth_for(self, size: int) -> int:
        return self.depth if self.depth is not None else auto_depth(size)

    def base_config(self, stage: int) -> "DistillConfig":
        """The base method alone (P = 1) at the IPC that PDD has after ``stage`` stages."""
        return self.replace(stages=1, ipc=self.cum_ipc(stage), stage_ipc=None, compare_base="off")

    def base_stages(self) -> list[int]:
        """Stages after which the base method alone is compared with PDD."""
        return {"off": [], "final": [self.stages], "every": list(range(1, self.stages + 1))}[self.compare_base]

    def automatic(self, size: int, n_train: int) -> dict[str, str]:
        """What each unset (automatic) setting becomes on ``size``-pixel data with ``n_train`` real
        training images, and why: front ends show it where the value would be."""
        from .methods import get_method
        auto = {"lr_img": f"{self.effective_lr_img:g} ({self.method.upper()}'s default)",
                "depth": f"{auto_depth(size)} (for {size} px)", "image_size": f"{size} (the dataset's own)",
                "stage_ipc": f"{','.join(map(str, self.ipcs))} (IPC split evenly)" if not self.ipc % self.stages else "",
                "max_train": f"all {n_train:,}"}
        auto.update(get_method(self.method).automatic(self, size, n_train))
        flat = self.flat()
        return {k: v for k, v in auto.items() if v and k in flat and flat[k] is None}

    @property
    def effective_lr_img(self) -> float:
        """The user's lr_img, or the method's default (its spec in the registry)."""
        from .methods import get_method  # the registry imports torch; config itself does not
        return self.lr_img if self.lr_img is not None else get_method(self.method).lr_img

    @property
    def dsa_ops(self) -> tuple[str, ...]:
        return () if self.dsa_strategy in ("", "none") else tuple(self.dsa_strategy.split("_"))

    def replace(self, **changes: Any) -> "DistillConfig":
        """A copy with ``changes`` (flat names). A new method keeps the hyper-parameters it shares with
        the old one (DC to IDC keeps outer_loop) and takes its defaults for the rest."""
        from .methods import get_method
        method = changes.get("method", self.method)
        carried = {k: v for k, v in self.params.to_dict().items() if k in get_method(method).Params.names()}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        return DistillConfig.make({**values, **carried, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # the method's hyper-parameters nested under "params"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        """From :meth:`to_dict` (nested ``params``) or from flat names (records of engine 0.x)."""
        return cls.make(d)


def auto_depth(size: int) -> int:
    """ConvNet depth by input size, as in the field: 3 for 28-32 px, 4 for 64 px; 2 for 8 px digits,
    so the last feature map stays 2x2 or larger instead of collapsing to a single pixel."""
    return 2 if size < 16 else 3 if size < 64 else 4


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(problem, fix)


def check_precision(name: str, value: str) -> None:
    """A ``Precision`` setting (the config's two, a bundle re-evaluation's), or a one-line error naming it."""
    _check(value in get_args(Precision), f"unknown {name} '{value}'", "use float32 or bfloat16")


def validate(c: DistillConfig) -> None:
    """Reject bad values and combinations with a message that names the fix."""
    from .methods import REGISTRY  # the registry imports torch; config itself does not
    _check(c.method in REGISTRY, f"unknown method '{c.method}'", f"choose one of {', '.join(REGISTRY)}")
    from .datasets import find
    find(c.dataset)  # a ConfigError naming the registered datasets if unknown
    _check(c.depth is None or (isinstance(c.depth, int) and 1 <= c.depth <= 6), f"depth {c.depth} is out of range",
           "use a depth from 1 to 6, or leave it unset to follow the input size")
    for name in ("stages", "ipc", "iterations", "width", "eval_epochs", "eval_models", "eval_batch", "filter_models"):
        _check(isinstance(getattr(c, name), int) and getattr(c, name) >= 1,
               f"{name} must be a whole number >= 1 (got {getattr(c, name)!r})", f"set {name} to 1 or more")
    for name in ("transition_epochs", "seed"):
        _check(isinstance(getattr(c, name), int) and getattr(c, name) >= 0,
               f"{name} must be a whole number >= 0 (got {getattr(c, name)!r})", f"set {name} to 0 or more")
    # seeds feed 32-bit derivations (training.seed_of): a larger one would repeat a smaller one's run
    _check(c.seed < 2 ** 32, f"seed {c.seed} is too large", "use a seed from 0 to 4294967295 (32 bits)")
    _check(c.stages <= c.ipc, f"stages P={c.stages} exceeds IPC={c.ipc}: a stage needs at least one image per class",
           f"use at most {c.ipc} stages, or raise IPC to {c.stages} or more")
    if c.stage_ipc is not None:
        schedule = ",".join(map(str, c.stage_ipc))
        _check(len(c.stage_ipc) == c.stages, f"stage_ipc {schedule} has {len(c.stage_ipc)} stages but P is {c.stages}",
               f"set stages to {len(c.stage_ipc)}, or give {c.stages} numbers")
        _check(sum(c.stage_ipc) == c.ipc, f"stage_ipc {schedule} adds up to {sum(c.stage_ipc)} images per class "
               f"but IPC is {c.ipc}", f"set IPC to {sum(c.stage_ipc)}, or change stage_ipc to add up to {c.ipc}")
    else:
        _check(c.ipc % c.stages == 0, f"IPC {c.ipc} is not divisible by stages P={c.stages}",
               f"pick IPC as a multiple of P, e.g. IPC {c.stages * max(1, round(c.ipc / c.stages))} "
               f"with P={c.stages}, or give the images per stage (stage_ipc)")
    _check(c.ipc <= 1000, f"IPC {c.ipc} is larger than this tool supports (1000)", "use IPC <= 1000")
    _check(c.width <= 1024, f"width {c.width} is out of range", "use a width from 1 to 1024")
    _check(c.norm in get_args(Norm), f"unknown norm '{c.norm}'", "use instance, batch or none")
    _check(c.device in get_args(Device), f"unknown device '{c.device}'", "use auto, cpu or cuda")
    check_precision("precision", c.precision)
    check_precision("eval_precision", c.eval_precision)
    _check(c.init in ("real", "noise"), f"unknown init '{c.init}'", "use real or noise")
    _check(c.transition in ("chain", "fresh"), f"unknown transition '{c.transition}'", "use chain or fresh")
    _check(c.compare_base in ("final", "every", "off"), f"unknown compare_base '{c.compare_base}'",
           "use final, every or off")
    bad_ops = [op for op in c.dsa_ops if op not in DSA_OPS]
    _check(not bad_ops, f"unknown augmentation(s) {bad_ops} in dsa_strategy",
           f"join names from {', '.join(DSA_OPS)} with '_', or use 'none'")
    _check(c.eval_lr > 0, "eval_lr must be > 0", "set eval_lr to a positive number")
    _check(c.lr_img is None or c.lr_img > 0, "lr_img must be > 0", "set lr_img to a positive number or leave it unset")
    _check(0.0 <= c.keep_easy <= 1.0, f"keep_easy {c.keep_easy} is not a probability", "use a value in [0, 1]")
    _check(c.image_size is None or 4 <= c.image_size <= 128, f"image_size {c.image_size} is out of range",
           "use an image size from 4 to 128")
    _check(c.max_train is None or c.max_train >= 10, "max_train must be >= 10",
           "set max_train to 10 or more, or leave it unset for the whole training set")
    _check(c.max_memory_gb is None or c.max_memory_gb > 0, "max_memory_gb must be > 0",
           "set a positive number of GB or leave it unset")
    REGISTRY[c.method].validate(c)  # the method's own rules across fields (each field's bounds: its Params)


def parse_stage_ipc(value: Any) -> Optional[tuple[int, ...]]:
    """A schedule from a tuple, a list (JSON) or text ("6,4", as the CLI and the page give it);
    None or an empty text: no schedule (IPC split evenly)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        out = ()
    _check(bool(out) and all(n >= 1 and str(n) == str(p).strip() for n, p in zip(out, parts)),
           f"stage_ipc {value!r} is not a list of whole numbers >= 1",
           "give the images per class of each stage, e.g. 6,4 (or leave it empty to split IPC evenly)")
    return out


def method_params(method: str, given: Any) -> Any:
    """The method's Params from ``given`` (None: defaults; a dict: those values; or a Params of that method)."""
    from .methods import Params, get_method  # the registry's specs do not import torch
    cls = get_method(method).Params
    if given is None:
        return cls()
    if isinstance(given, Mapping):
        return cls.from_dict(given)
    if isinstance(given, Params) and type(given) is cls:
        return given
    raise ConfigError(f"params of type {type(given).__name__} do not belong to method '{method}'",
                      f"pass {cls.__name__}(...) or a dict of {method}'s settings")


PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: the offline digits set, a narrow ConvNet, short schedules.
    "cpu-quick": {},
    "cpu-mnist": dict(dataset="mnist", max_train=10000, iterations=200, eval_epochs=300, width=32),
    # The paper's GPU settings (PDD.md), P = 5: per-stage values from the public code.
    "paper-cifar10-ipc10": dict(dataset="cifar10", method="mtt", stages=5, ipc=10, iterations=5000,
                                syn_steps=50, expert_epochs=2, max_start_epoch=5, lr_img=1000.0,
                                lr_lr=1e-7, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                eval_epochs=1000, transition_epochs=300),
    "paper-cifar10-ipc50": dict(dataset="cifar10", method="mtt", stages=5, ipc=50, iterations=5000,
                                syn_steps=30, expert_epochs=2, max_start_epoch=15, lr_img=1000.0,
                                lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                eval_epochs=1000, transition_epochs=300),
    "paper-cifar100-ipc10": dict(dataset="cifar100", method="mtt", stages=5, ipc=10, iterations=5000,
                                 syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0,
                                 lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                 eval_epochs=1000, transition_epochs=300),
    "paper-cifar100-ipc50": dict(dataset="cifar100", method="mtt", stages=5, ipc=50, iterations=5000,
                                 syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0,
                                 lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                 eval_epochs=1000, transition_epochs=300),
}


def preset(name: str, **overrides: Any) -> DistillConfig:
    """A preset config with ``overrides`` (flat names) applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'", f"choose one of {', '.join(PRESETS)}")
    return DistillConfig.make({**PRESETS[name], **overrides})
