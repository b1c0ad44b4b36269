"""One typed, validated config for a distillation run, and the presets.

The fields every method shares are flat and declared with :func:`~pdd_engine.registry.setting` (label,
hint, bounds, the server's maximum, choice labels); a method's own hyper-parameters are its registered
``Params`` dataclass in ``params`` (``cfg.params.syn_steps`` for MTT), declared with ``param``. Front ends
speak flat names (``--syn-steps``, one control per field): :meth:`DistillConfig.make` routes each name to
its place and refuses a setting of another method with a fix. Which fields feed which cached artefact is
declared in :mod:`pdd_engine.keys`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping, Optional, get_args

from . import datasets, methods  # noqa: F401  (the registries, filled by their sources)
from .errors import ConfigError
from .registry import (REGISTRY, Params, check_cap, check_value, find, get_method, owners, reserve, setting,
                       spec_of)
from .strategy import DSA_OPS, FIELD_STRATEGY, auto_strategy, strategy_ops

Norm = Literal["instance", "batch", "none"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]
BF16 = "faster for larger networks on processors with bf16 instructions"
AUTO_BF16 = "bfloat16 where the processor has it and the network is large enough to gain (not digits at width 32), else float32"


@dataclass(frozen=True)
class DistillConfig:
    # what to distil
    dataset: str = setting("digits", "Dataset", "a built-in set, or folder:PATH / idx:PATH for your own", shown="main")
    method: str = setting("dm", "Base method", "the method each stage wraps", shown="main")
    # the method's own hyper-parameters (its registered Params dataclass; None: its defaults)
    params: Any = setting(None, "Method settings", shown="hidden")
    # cpu-quick: the measured best PDD row on digits within 3 minutes (docs/benchmarks.md)
    stages: int = setting(2, "Stages P", "how many small sets are distilled one after another, each frozen before "
                          "the next", minimum=1, maximum=50, server_max=10, shown="main")
    ipc: int = setting(10, "Total IPC", "synthetic images per class in the end, over all stages", minimum=1,
                       maximum=1000, server_max=100, shown="main")
    # images per class each stage adds, e.g. (6, 4): more in the first stage, as the paper's ablation
    # tries; None splits IPC evenly. Its length is P and its sum is IPC ("6,4" on the CLI and the page)
    stage_ipc: Optional[tuple[int, ...]] = setting(None, "Images per class of each stage",
                                                   "images per class each stage adds, e.g. 6,4; empty splits IPC evenly")
    iterations: int = setting(200, "Iterations per stage", "image updates per stage (the base method's budget)",
                              minimum=1, maximum=10 ** 6, server_max=5000)
    # the paper's ablation knobs for stages 2..P (whose images refine what earlier stages already cover)
    later_iterations: Optional[int] = setting(None, "Iterations of later stages", "image updates in stages 2 to P; "
                                              "empty: as many as the first", minimum=1, maximum=10 ** 6, server_max=5000)
    later_lr_scale: float = setting(1.0, "Image learning rate of later stages (x)", "stages 2 to P update their images "
                                    "at this times the image learning rate", positive=True, maximum=1000)
    seed: int = setting(0, "Seed", "one seed for everything: the same seed gives the same result", minimum=0,
                        maximum=2 ** 32 - 1)  # seeds feed 32-bit derivations (training.seed_of)
    # synthetic images
    lr_img: Optional[float] = setting(None, "Image learning rate", "step size of the synthetic pixels", positive=True)
    init: Literal["real", "noise"] = setting("real", "Initial images", "start from real images or from noise",
                                             shown="hidden")
    # auto: the field's six operations, without flip where the dataset declares that a mirror changes the
    # class (DatasetSpec.mirrors: digits, MNIST, SVHN), as IDC's reference does; keys, records and manifests
    # hold the resolved strategy (device.resolved), so an auto run and the same strategy typed out are one run
    dsa_strategy: str = setting("auto", "Augmentation",
                                "DSA operations joined by '_' (color, crop, cutout, flip, scale, rotate), or none; "
                                f"auto: {FIELD_STRATEGY}, without flip on digit datasets (digits, MNIST, SVHN: a mirrored "
                                "digit is not that digit)")
    zca: bool = setting(False, "ZCA whitening", "whiten images (ZCA), as the field does for CIFAR")
    image_size: Optional[int] = setting(None, "Image size in pixels", "resize every image to this many pixels per side "
                                        "(set it for mixed-size uploads)", minimum=4, maximum=128)
    max_train: Optional[int] = setting(None, "Real training images", "a stratified subset of the real training set "
                                       "(seed 0); empty: all of it", minimum=10)
    # network
    depth: Optional[int] = setting(None, "Network depth", "ConvNet blocks (conv, norm, ReLU, pool)", minimum=1,
                                   maximum=6)  # None: the field's choice for the input size (see auto_depth)
    width: int = setting(32, "Network width", "channels of the ConvNet used to distil and to evaluate", minimum=1,
                         maximum=1024, server_max=256)
    norm: Norm = setting("instance", "Normalisation", "of the ConvNet's blocks", shown="hidden")
    # PDD transition: where stage i's matching networks start. "chain" (the official code): one
    # network trained on U_1, then U_2, ... U_{i-1}, transition_epochs each; "fresh": a new network
    # trained on U_{i-1} alone.
    transition: Literal["chain", "fresh"] = setting(
        "chain", "PDD transition", "where each stage's matching networks start (chain: the paper's)",
        choices=[("chain: one network through U_1, U_2, ... (paper)", "chain"),
                 ("fresh: a new network on U_{i-1}", "fresh")])
    transition_epochs: int = setting(50, "PDD transition epochs", "epochs a network trains on each earlier stage "
                                     "before it is matched", minimum=0, maximum=10 ** 5, server_max=1000)
    # easy-example filtering between stages (PDD, optional)
    filter_easy: bool = setting(False, "Drop easy real examples between stages", "drop the real examples networks "
                                "already classify well before each next stage")
    keep_easy: float = setting(0.2, "Easy examples kept", "the share of easy examples kept", minimum=0.0, maximum=1.0,
                               shown="hidden")
    filter_models: int = setting(3, "Easy-example scorers", "networks that score the real examples", minimum=1,
                                 maximum=100, server_max=10, shown="hidden")
    # evaluation (curriculum: eval_epochs on U_1, then on U_2, ... with optimizer state carried)
    eval_epochs: int = setting(300, "Evaluation epochs per stage", "epochs each evaluation network trains per stage",
                               minimum=1, maximum=10 ** 5, server_max=2000)
    eval_models: int = setting(3, "Evaluation networks", "evaluation networks per stage: the ± is their std", minimum=1,
                               maximum=100, server_max=10)
    eval_lr: float = setting(0.01, "Evaluation learning rate", "used where a stage carries no learned lr",
                             positive=True, shown="hidden")
    eval_batch: int = setting(256, "Evaluation batch", "minibatch of the evaluation, transitions and scorers",
                              minimum=1, maximum=2 ** 16, server_max=4096, shown="hidden")
    eval_dsa: bool = setting(True, "Augment the evaluation", "DSA while evaluation networks train", shown="hidden")
    # the evaluation networks trained together (vmap) or one after another; None: batched on a GPU,
    # one after another on a CPU (training.trains_together, bench/speed.py --only eval_widths).
    # The same results either way, up to floating-point summation order (not in any cache key)
    eval_batched: Optional[bool] = setting(None, "Train evaluation networks together", "vmap; empty: where "
                                           "measured faster", shown="hidden")
    # the arithmetic of the evaluation (its networks' training and test pass; the easy-example scorers too):
    # float32, the field's protocol, or bfloat16 autocast, faster on processors with bf16 instructions at
    # the same accuracy (docs/benchmarks.md); auto: bf16 where the processor has it and, on a CPU, the network
    # is large enough to gain (device.resolved). The resolved value enters the evaluation keys; it changes no
    # distilled image.
    eval_precision: Precision = setting(
        "auto", "Arithmetic of the evaluation", "the evaluation networks' training and test pass in float32 (the "
        f"field's protocol), or under bfloat16 autocast ({BF16}); auto: {AUTO_BF16}",
        choices=[(f"auto: {AUTO_BF16}", "auto"), ("float32 (the field's protocol)", "float32"),
                 (f"bfloat16 ({BF16})", "bfloat16")])
    # the base method alone (P = 1) at the same IPC, beside PDD: at the final stage, every stage, or off
    compare_base: Literal["final", "every", "off"] = setting(
        "final", "Compare with the base method alone (P=1)", "also distil the base method alone (P=1) at the same "
        "IPC, to see PDD's gain", choices=[("at the final stage", "final"), ("at every stage", "every"), ("off", "off")])
    # beside it, the base method's P = 1 images trained for the curriculum's total epochs (i x eval_epochs
    # after stage i: the same curriculum with each union replaced by those images), where i > 1
    compare_epochs: bool = setting(True, "Compare with the base method trained as long", "also train the base "
                                   "method's P=1 images for as many epochs as PDD's curriculum (P x the evaluation "
                                   "epochs): did the stages make better images, or only train longer?")
    # where it runs
    device: Device = setting("auto", "Device", "auto: CUDA when present, else CPU")
    # the arithmetic of the distillation's matching (each method's loss, under torch.autocast): bfloat16
    # is faster on processors with bf16 instructions, and the images it gives differ, so its resolved value
    # is in the stage keys; auto: as eval_precision's. Transitions and experts run in float32;
    # the evaluation's arithmetic is eval_precision.
    precision: Precision = setting(
        "auto", "Arithmetic of the matching", "the distillation's matching in float32, or under bfloat16 "
        f"autocast ({BF16}; the evaluation has its own arithmetic setting); auto: {AUTO_BF16}",
        choices=[(f"auto: {AUTO_BF16}", "auto"), ("float32", "float32"),
                 (f"bfloat16 ({BF16})", "bfloat16")])
    # where a stage's independent units (MTT's experts) run: local (this process) or ray (a cluster);
    # None: PDD_EXECUTOR, else local. Results are the same either way.
    executor: Optional[Literal["local", "ray"]] = setting(
        None, "Executor", "where a stage's independent units (experts, evaluation networks, scorers) run; same "
        "results", choices=[("the server's (PDD_EXECUTOR, else local)", ""), ("local: in the engine's process", "local"),
                            ("ray: Ray tasks (RAY_ADDRESS's cluster, else a local Ray)", "ray")],
        shown="server")  # the studio's server decides (PDD_EXECUTOR); the CLI's --executor
    data_root: Optional[str] = setting(None, "Data folder", "where built-in datasets live", shown="server")
    cache_dir: Optional[str] = setting(None, "Cache folder", "where stages are cached", shown="server")
    max_memory_gb: Optional[float] = setting(None, "Memory budget (GB)", "what a step may use; empty: what the "
                                             "machine has", positive=True, shown="hidden")

    def __post_init__(self) -> None:
        for name in ("dataset", "method", "dsa_strategy"):  # text before anything reads it as a name
            check_value(name, getattr(self, name), str, {})
        object.__setattr__(self, "params", method_params(self.method, self.params))
        object.__setattr__(self, "stage_ipc", parse_stage_ipc(self.stage_ipc))
        validate(self)

    @classmethod
    def make(cls, values: Mapping[str, Any], *, other_methods: Literal["error", "drop"] = "error") -> "DistillConfig":
        """A config from flat names, as front ends and presets give them: shared fields go to the
        config, the chosen method's hyper-parameters to ``params``. A hyper-parameter of another method
        is an error naming the fix (``other_methods="drop"`` ignores it: a preset's values for a method
        the user switched away from)."""
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
        auto = {"lr_img": f"{self.effective_lr_img:g} ({self.method.upper()}'s default)",
                "depth": f"{auto_depth(size)} (for {size} px)", "image_size": f"{size} (the dataset's own)",
                "stage_ipc": f"{','.join(map(str, self.ipcs))} (IPC split evenly)" if not self.ipc % self.stages else "",
                "max_train": f"all {n_train:,}", "later_iterations": f"{self.iterations} (as the first stage)"}
        auto.update(get_method(self.method).automatic(self, size, n_train))
        flat = self.flat()
        return {k: v for k, v in auto.items() if v and k in flat and flat[k] is None}

    @property
    def effective_lr_img(self) -> float:
        """The user's lr_img, or the method's default (its spec in the registry)."""
        return self.lr_img if self.lr_img is not None else get_method(self.method).lr_img

    def iterations_at(self, stage: int) -> int:
        """Image updates of stage ``stage``: ``iterations`` for the first, ``later_iterations`` (if set) after."""
        return self.later_iterations if stage > 1 and self.later_iterations is not None else self.iterations

    def lr_img_at(self, stage: int) -> float:
        """The image learning rate of stage ``stage``: ``later_lr_scale`` times the first stage's after it."""
        return self.effective_lr_img * (self.later_lr_scale if stage > 1 else 1.0)

    @property
    def augmentation(self) -> str:
        """The DSA strategy this config runs: ``dsa_strategy``, with ``auto`` resolved for its dataset."""
        return self.dsa_strategy if self.dsa_strategy != "auto" else auto_strategy(find(self.dataset).mirrors)

    @property
    def known_size(self) -> Optional[int]:
        """The images' side in pixels where it is known before the data is loaded: ``image_size``, or a
        built-in dataset's own (None for your own data at its own size)."""
        shape = find(self.dataset).shape
        return self.image_size or (shape[1] if shape else None)

    @property
    def dsa_ops(self) -> tuple[str, ...]:
        return strategy_ops(self.augmentation)

    def replace(self, **changes: Any) -> "DistillConfig":
        """A copy with ``changes`` (flat names). A new method keeps the hyper-parameters it shares with
        the old one (DC to IDC keeps outer_loop) and takes its defaults for the rest."""
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


reserve({f.name for f in fields(DistillConfig)})


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
    _check(value in get_args(Precision), f"unknown {name} '{value}'", "use auto, float32 or bfloat16")


def declarations() -> list[tuple[str, Any, Any, dict]]:
    """(name, type, default, metadata) of every shared field (``params`` aside), in order."""
    hints = typing.get_type_hints(DistillConfig)
    return [(f.name, hints[f.name], f.default, dict(f.metadata)) for f in fields(DistillConfig) if f.name != "params"]


def augmentation_problem(strategy: str, field: str = "dsa_strategy", auto: bool = True) -> Optional[tuple[str, str]]:
    """(problem, fix) where ``strategy`` is not operations joined by single '_', each known and named once
    (or 'none', or 'auto' where ``auto`` allows it: a config, not a manifest, which records what ran); else
    None. One rule for a config and a bundle's manifest; quotes stay short, whatever the length of what was sent."""
    if auto and strategy == "auto":
        return None
    ops = strategy_ops(strategy)
    fix = (f"join names from {', '.join(DSA_OPS)} with single '_', or use 'none' for no augmentation"
           + (" or 'auto' for the dataset's default" if auto else ""))
    if strategy == "" or "" in ops:
        return f"{field} {strategy[:40]!r} has an empty name (nothing, or nothing between two '_')", fix
    unknown = list(dict.fromkeys(op[:24] for op in ops if op not in DSA_OPS))
    if unknown:
        return f"unknown augmentation(s) {unknown[:5]}{' and more' if len(unknown) > 5 else ''} in {field}", fix
    twice = sorted(op for op, n in collections.Counter(ops).items() if n > 1)
    if twice:
        return (f"augmentation(s) {twice} named more than once in {field} (each call draws one of the names)",
                f"name each of {', '.join(DSA_OPS)} at most once, e.g. {'_'.join(dict.fromkeys(ops))}")
    return None


def validate(c: DistillConfig) -> None:
    """Reject bad values and combinations with a message that names the fix: every field against its own
    declaration (type, bounds, finite numbers), then the rules across fields."""
    _check(c.method in REGISTRY, f"unknown method '{c.method}'", f"choose one of {', '.join(REGISTRY)}")
    find(c.dataset)  # a ConfigError naming the registered datasets if unknown
    for name, t, _, meta in declarations():
        if name != "stage_ipc":
            check_value(name, getattr(c, name), t, meta)
    _check(c.stages <= c.ipc, f"stages P={c.stages} exceeds IPC={c.ipc}: a stage needs at least one image per class",
           f"use at most {c.ipc} stages, or raise IPC to {c.stages} or more")
    if c.stage_ipc is not None:
        schedule = ",".join(map(str, c.stage_ipc))
        _check(len(c.stage_ipc) == c.stages, f"stage_ipc {schedule} has {len(c.stage_ipc)} stages but P is {c.stages}",
               f"set stages to {len(c.stage_ipc)}, or give {c.stages} numbers")
        total, most = sum(c.stage_ipc), DistillConfig.__dataclass_fields__["ipc"].metadata["maximum"]
        _check(total == c.ipc, f"stage_ipc {schedule} adds up to {total} images per class but IPC is {c.ipc}",
               (f"set IPC to {total}, or " if total <= most else "") + f"change stage_ipc to add up to {c.ipc}")
    else:
        _check(c.ipc % c.stages == 0, f"IPC {c.ipc} is not divisible by stages P={c.stages}",
               f"pick IPC as a multiple of P, e.g. IPC {c.stages * max(1, round(c.ipc / c.stages))} "
               f"with P={c.stages}, or give the images per stage (stage_ipc)")
    if problem := augmentation_problem(c.dsa_strategy):
        raise ConfigError(*problem)
    REGISTRY[c.method].validate(c)  # the method's own rules across fields (each field's bounds: its Params)


def check_caps(c: DistillConfig, environ: Optional[Mapping[str, str]] = None) -> None:
    """A one-line ConfigError if any setting is over the server's maximum for it (its declared
    ``server_max``, raised with ``PDD_MAX_<NAME>``): what the studio's door checks before any work."""
    for name, _, _, meta in declarations():
        check_cap(name, getattr(c, name), meta, environ)
    for name, _, _, meta in type(c.params).specs():
        check_cap(name, getattr(c.params, name), meta, environ)


def schema() -> dict[str, Any]:
    """Every setting as plain data (name, label, hint, kind, bounds, server maximum, choices, the methods
    that own it, where it is shown), with the registered methods, datasets and presets: what a front end
    that imports no engine (the studio's web process) builds its controls and checks from."""
    shared = [spec_of(name, t, default, meta) for name, t, default, meta in declarations()]
    own: dict[str, dict] = {}
    for name, cls in REGISTRY.items():
        for pname, t, default, meta in cls.Params.specs():
            own.setdefault(pname, spec_of(pname, t, default, meta, tuple(owners(pname))))
    return {"settings": shared + list(own.values()),
            "methods": [{"name": n, "title": cls.title, "lr_img": cls.lr_img} for n, cls in REGISTRY.items()],
            "datasets": [{"name": n, "title": s.title, "shape": s.shape, "scheme": s.scheme}
                         for n, s in datasets.DATASETS.items()],
            "presets": PRESETS}


def parse_stage_ipc(value: Any) -> Optional[tuple[int, ...]]:
    """A schedule from a tuple, a list (JSON) or text ("6,4", as the CLI and the page give it);
    None or an empty text: no schedule (IPC split evenly)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError, AttributeError):
        parts, out = [], ()
    most = int(DistillConfig.__dataclass_fields__["ipc"].metadata["maximum"])
    _check(bool(out) and len(out) <= most and all(1 <= n <= most and str(n) == str(p).strip() for n, p in zip(out, parts)),
           f"stage_ipc {str(value)[:40]!r} is not a list of whole numbers from 1 to {most}",
           "give the images per class of each stage, e.g. 6,4 (or leave it empty to split IPC evenly)")
    return out


def method_params(method: str, given: Any) -> Any:
    """The method's Params from ``given`` (None: defaults; a dict: those values; or a Params of that method)."""
    cls = get_method(method).Params
    if given is None:
        return cls()
    if isinstance(given, Mapping):
        return cls.from_dict(given)
    if isinstance(given, Params) and type(given) is cls:
        return given
    raise ConfigError(f"params of type {type(given).__name__} do not belong to method '{method}'",
                      f"pass {cls.__name__}(...) or a dict of {method}'s settings")


FLOAT32 = dict(precision="float32", eval_precision="float32")
PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: the offline digits set, a narrow ConvNet, short schedules.
    "cpu-quick": {},
    # The row of bench/results/quality.csv (results.showcase) where PDD is furthest ahead of all three
    # comparisons (its own P = 1, those images trained as long, its random curriculum) among the rows that
    # finish within about a quarter of an hour on 2 cores; it pins what its row set. The studio suggests it after the
    # default run (docs/benchmarks.md, "The default and the showcase").
    "cpu-showcase": dict(dataset="mnist", max_train=10000, method="idc", width=32, lr_img=0.5,
                         dsa_strategy=FIELD_STRATEGY),
    "cpu-mnist": dict(dataset="mnist", max_train=10000, iterations=200, eval_epochs=300, width=32),
    # The paper's GPU settings (PDD.md), P = 5: per-stage values from the public code, in float32 (the field's
    # protocol) wherever they run.
    "paper-cifar10-ipc10": dict(dataset="cifar10", method="mtt", stages=5, ipc=10, iterations=5000,
                                syn_steps=50, expert_epochs=2, max_start_epoch=5, lr_img=1000.0,
                                lr_lr=1e-7, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                eval_epochs=1000, transition_epochs=300, **FLOAT32),
    "paper-cifar10-ipc50": dict(dataset="cifar10", method="mtt", stages=5, ipc=50, iterations=5000,
                                syn_steps=30, expert_epochs=2, max_start_epoch=15, lr_img=1000.0,
                                lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                eval_epochs=1000, transition_epochs=300, **FLOAT32),
    "paper-cifar100-ipc10": dict(dataset="cifar100", method="mtt", stages=5, ipc=10, iterations=5000,
                                 syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0,
                                 lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                 eval_epochs=1000, transition_epochs=300, **FLOAT32),
    "paper-cifar100-ipc50": dict(dataset="cifar100", method="mtt", stages=5, ipc=50, iterations=5000,
                                 syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0,
                                 lr_lr=1e-5, expert_lr=0.01, zca=True, width=128, num_experts=100,
                                 eval_epochs=1000, transition_epochs=300, **FLOAT32),
}


def preset(name: str, **overrides: Any) -> DistillConfig:
    """A preset config with ``overrides`` (flat names) applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'", f"choose one of {', '.join(PRESETS)}")
    return DistillConfig.make({**PRESETS[name], **overrides})
