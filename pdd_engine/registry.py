"""The registries and the declarations front ends read: a leaf (it imports nothing of the engine but
errors and settings), so nothing can circle through it, as timm's ``_registry.py``.

- **Settings.** A config field (:func:`setting`) or a method's hyper-parameter (:func:`param`) is declared
  once: default, label, one-line hint, bounds, the server's maximum, choice labels. Validation, the CLI's
  flags, the studio's controls (through the service's ``schema()``), the caps at the studio's door and the
  docs all read the declaration.
- **Methods.** A base method registers a :class:`MethodSpec` subclass (``@register``): name, title, image
  lr, its ``Params`` dataclass, the artefacts it caches, its cost model and manifest notes.
- **Datasets.** A dataset source registers a :class:`DatasetSpec` (``register_dataset``) where its loader
  lives (``pdd_engine/datasets/``).
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional

from .errors import ConfigError
from .settings import cap, cap_variable

if TYPE_CHECKING:
    from .config import DistillConfig


# -- declarations ------------------------------------------------------------------------------
def declared(default: Any, label: str, hint: str = "", *, minimum: Optional[float] = None,
             maximum: Optional[float] = None, positive: bool = False, semantic: bool = True,
             server_max: Optional[float] = None, choices: Optional[list[tuple[str, Any]]] = None,
             shown: str = "advanced") -> Any:
    """A declared field: its default, the label and one-line hint front ends show, its bounds (``minimum``
    and ``maximum`` inclusive, ``positive``: > 0), ``server_max`` (the most the studio's server runs; its
    operator raises it with ``PDD_MAX_<NAME>``), labels for its choices, whether it changes what is computed
    (``semantic=False``: only how, e.g. a memory strategy; it enters no cache key), and where the studio
    shows it (``main``, ``advanced`` or ``hidden``)."""
    return field(default=default, metadata={"label": label, "hint": hint, "minimum": minimum, "maximum": maximum,
                                            "positive": positive, "semantic": semantic, "server_max": server_max,
                                            "choices": choices, "shown": shown})


setting = declared  # a shared config field (pdd_engine.config)
param = declared  # a method's own hyper-parameter (its Params)


def number(v: float) -> str:
    """A bound as people write it: whole numbers in full (4294967295, not 4.29497e+09), others short."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e18 else f"{v:g}"


def base_type(t: Any) -> tuple[Any, bool]:
    """(type without Optional, whether None is allowed)."""
    args = typing.get_args(t)
    if typing.get_origin(t) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return t, False


MAX_TEXT = 4096  # characters in a text setting (a dataset path at most; PATH_MAX on Linux)


def check_value(name: str, value: Any, t: Any, meta: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming the fix unless ``value`` fits type ``t`` and the field's bounds. A fix
    never suggests a value outside them."""
    t, optional = base_type(t)
    unset = ", or leave it unset" if optional else ""
    if value is None:
        if not optional:
            raise ConfigError(f"{name} must be set", f"give {name} a value")
        return
    if typing.get_origin(t) is Literal:
        if value not in typing.get_args(t):
            raise ConfigError(f"unknown {name} {str(value)[:40]!r}", f"use {' or '.join(map(str, typing.get_args(t)))}")
        return
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false (got {value!r})", f"set {name} to true or false")
        return
    if t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be text (got {str(value)[:40]!r})", f"set {name} to text{unset}")
        if len(value) > MAX_TEXT:  # before any rule reads it: the longest real one is a path
            raise ConfigError(f"{name} is {len(value):,} characters long, more than {MAX_TEXT:,}",
                              f"set {name} to a shorter text{unset}")
        return
    low, high = meta.get("minimum"), meta.get("maximum")
    span = ("" if low is None and high is None else f" from {number(low)} to {number(high)}"
            if low is not None and high is not None else f" of {number(low)} or more" if low is not None
            else f" of {number(high)} or less")
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be a whole number (got {value!r})", f"set {name} to a whole number{span}{unset}")
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number (got {value!r})", f"set {name} to a number{span}{unset}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number (got {value!r})", f"set {name} to a number{span}{unset}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {number(low)} (got {value!r})", f"set {name} to a value{span}{unset}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {number(high)} (got {value!r})", f"set {name} to a value{span}{unset}")
    if meta.get("positive") and value <= 0:
        raise ConfigError(f"{name} must be > 0 (got {value!r})", f"set {name} to a positive number{unset}")


def check_cap(name: str, value: Any, meta: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None) -> None:
    """A one-line ConfigError if ``value`` is over the setting's server maximum (``PDD_MAX_<NAME>``)."""
    default = meta.get("server_max")
    if default is None or value is None or isinstance(value, bool):
        return
    most = cap(name, default, environ)
    if value > most:
        var = cap_variable(name)
        raise ConfigError(f"{name} {number(value)} is over this server's maximum of {number(most)} ({var})",
                          f"set {name} to {number(most)} or less, or run it with the CLI on your own machine "
                          f"(the server's operator can raise {var})")


def spec_of(name: str, t: Any, default: Any, meta: Mapping[str, Any], owners: tuple[str, ...] = ()) -> dict:
    """One declaration as plain data (what the service's ``schema()`` hands the studio)."""
    base, optional = base_type(t)
    kind = ("choice" if typing.get_origin(base) is Literal else "bool" if base is bool else "int" if base is int
            else "float" if base is float else "text")
    choices = meta.get("choices") or ([(str(c), c) for c in typing.get_args(base)] if kind == "choice" else None)
    return {"name": name, "label": meta.get("label") or name, "hint": meta.get("hint", ""), "kind": kind,
            "optional": optional, "default": default, "minimum": meta.get("minimum"), "maximum": meta.get("maximum"),
            "positive": meta.get("positive", False), "server_max": meta.get("server_max"), "choices": choices,
            "shown": meta.get("shown", "advanced"), "owners": list(owners)}


# -- a method's hyper-parameters -----------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """Base of a method's own hyper-parameters. Subclasses declare fields with :func:`param`;
    values are checked against each field's type and bounds on construction."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), hints[f.name], f.metadata)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Params":
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} for this method",
                              f"use only {', '.join(cls.names()) or 'none'}")
        return cls(**values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def specs(cls) -> list[tuple[str, Any, Any, dict]]:
        """(name, type, default, metadata) per field, for front ends that build flags and controls."""
        hints = typing.get_type_hints(cls)
        return [(f.name, hints[f.name], None if f.default is MISSING else f.default, dict(f.metadata))
                for f in fields(cls)]

    def semantic(self) -> dict[str, Any]:
        """The fields that change what is computed (they enter the method's stage keys)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("semantic", True)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NoParams(Params):
    """A method without hyper-parameters of its own."""


@dataclass
class Work:
    """Counted work of one stage's distillation, for the estimate (pdd_engine.estimate)."""

    calls: float = 0.0  # forward + backward calls through the network
    samples: float = 0.0  # samples through those calls
    transitions: int = 0  # networks first brought through the transition (stage 2 on)
    training: list[tuple[float, float, int]] = field(default_factory=list)  # (real examples, epochs, batch)


# -- the method registry -------------------------------------------------------------------------
REGISTRY: dict[str, type["MethodSpec"]] = {}
RESERVED: set[str] = set()  # the shared config fields' names (config reserves them): no hyper-parameter may take one


def register(cls: type["MethodSpec"]) -> type["MethodSpec"]:
    """Class decorator: make a base method available to every front end under ``cls.name``."""
    if not cls.title or not cls.name or cls.name == "base":
        raise TypeError(f"{cls.__name__} needs a name and a title to be registered")
    _no_clash(cls)
    REGISTRY[cls.name] = cls
    return cls


def reserve(names: set[str]) -> None:
    """Keep ``names`` (the shared config fields) from every method's hyper-parameters, registered or to come:
    a flat name (``--iterations``, one control) must mean one thing."""
    RESERVED.update(names)
    for cls in REGISTRY.values():
        _no_clash(cls)


def _no_clash(cls: type["MethodSpec"]) -> None:
    clash = set(cls.Params.names()) & RESERVED
    if clash:
        raise TypeError(f"{cls.__name__}.Params redefines config field(s) {sorted(clash)}")


def get_method(name: str) -> type["MethodSpec"]:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ConfigError(f"unknown method '{str(name)[:40]}'", f"choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def all_params() -> list[tuple[str, Any, Any, dict]]:
    """Every registered method's hyper-parameters as (name, type, default, metadata), a name that
    several methods share once (the first method's spec): the CLI's flags and the studio's controls."""
    out: dict[str, tuple[str, Any, Any, dict]] = {}
    for cls in REGISTRY.values():
        for spec in cls.Params.specs():
            out.setdefault(spec[0], spec)
    return list(out.values())


def owners(name: str) -> list[str]:
    """The registered methods that have a hyper-parameter called ``name``."""
    return [m for m, cls in REGISTRY.items() if name in cls.Params.names()]


class MethodSpec:
    """The class-level spec of a base method. Its subclass :class:`~pdd_engine.methods.base.Method`
    adds the stage hooks; a method file subclasses that and sets the attributes below."""

    name = "base"
    title = ""  # shown in the studio's method menu and the CLI's help
    lr_img = 0.1  # default synthetic-image lr (SGD, momentum 0.5) on normalised, un-whitened inputs
    Params: type[Params] = NoParams  # the method's own hyper-parameters
    # Artefacts it caches through ctx.cached(name, ...), each with the hyper-parameters it depends on
    # beyond the stage context.
    memos: dict[str, tuple[str, ...]] = {}

    @classmethod
    def validate(cls, cfg: "DistillConfig") -> None:
        """Rules across fields, beyond each field's own type and bounds (raise ConfigError naming the fix)."""

    @classmethod
    def key_params(cls, cfg: "DistillConfig", size: int) -> dict[str, Any]:
        """The hyper-parameters as they enter the stage key: semantic fields, automatic values resolved."""
        return cfg.params.semantic()

    @classmethod
    def automatic(cls, cfg: "DistillConfig", size: int, n_train: int) -> dict[str, str]:
        """What each of the method's unset (automatic) settings becomes on ``size``-pixel data with
        ``n_train`` real training images, and why: front ends show it where the value would be."""
        return {}

    @classmethod
    def warnings(cls, cfg: "DistillConfig", n_train: int) -> list[str]:
        """Valid settings that will likely hurt quality, given ``n_train`` real training images."""
        return []

    @classmethod
    def health(cls, cfg: "DistillConfig", losses: list[list[float]], learned_lr: float) -> Optional[str]:
        """A warning when a finished stage's matching went wrong without failing (its recorded
        ``[iteration, loss]`` pairs and learned step size say so), else None. Read from the stored
        stage, so a replayed stage says it again."""
        return None

    @classmethod
    def advice(cls, cfg: "DistillConfig") -> str:
        """What to change when this method's loss diverges (named in the run's one-line failure)."""
        return "lower lr_img"

    @classmethod
    def cost(cls, cfg: "DistillConfig", classes: int, union: float, n_train: int, later: bool) -> Work:
        """Work of one stage whose union holds ``union`` training images; ``later``: stage 2 on."""
        return Work(cfg.iterations * 2 * classes, cfg.iterations * 2 * (classes + union))

    @classmethod
    def extra_memory(cls, cfg: "DistillConfig", channels: int, size: int, classes: int, union: int, n_train: int,
                     device) -> int:
        """Peak bytes beyond data and union (MTT: the unrolled trajectory)."""
        return 0

    @classmethod
    def images_per_stored(cls, cfg: "DistillConfig", size: int) -> int:
        """Training images one stored image decodes to (IDC: factor^2)."""
        return 1

    @classmethod
    def manifest(cls, cfg: "DistillConfig", size: int) -> dict:
        """What a bundle's manifest says about this method's images."""
        return {"matching_augmentation": cfg.augmentation, "training_form": "stored images are the training images",
                "resolved": {}}


# -- the dataset registry ------------------------------------------------------------------------
# (data_root, image_size, name) -> (x_train, y_train, x_test, y_test, classes, source): [0, 1] float
# arrays (N, C, H, W) and integer labels; normalisation is applied afterwards, the same for every source.
Loader = Callable[[Optional[str], Optional[int], str], tuple]
NORMALISATION = "per-channel mean and std of the training split (then ZCA if --zca)"


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the config value, or a scheme ending in ':' that a path follows
    title: str
    load: Loader
    available: Callable[[Optional[str]], bool]  # usable without a download, given --data-root
    licence: str  # one line: where the data comes from and under which terms
    shape: Optional[tuple[int, int, int, int]] = None  # (channels, size, classes, train examples), for the estimate
    # whether a left-right mirror keeps an image's class: not for digits (a mirrored 2 is no digit), which IDC's
    # reference takes out of its augmentation on MNIST and SVHN; unknown (your own data) counts as yes
    mirrors: bool = True

    @property
    def scheme(self) -> bool:
        return self.name.endswith(":")

    def availability(self, data_root: Optional[str] = None) -> str:
        return "offline" if self.available(data_root) else "needs download"


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def named() -> list[str]:
    """Registered single datasets (not schemes), in registration order."""
    return [n for n, s in DATASETS.items() if not s.scheme]


def find(name: str) -> DatasetSpec:
    """The spec of a config's ``dataset`` value, or a ConfigError that lists the choices."""
    spec = DATASETS.get(name) or next((s for n, s in DATASETS.items() if s.scheme and name.startswith(n)), None)
    if spec is None:
        schemes = " / ".join(f"'{n}/path'" for n, s in DATASETS.items() if s.scheme)
        raise ConfigError(f"unknown dataset '{name}'",
                          f"choose one of {', '.join(named())}, or {schemes} for your own data")
    return spec
