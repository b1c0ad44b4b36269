"""What a base method *is*, apart from how it computes: its registry entry.

A method registers a spec: name, title, default image lr, its own hyper-parameter dataclass (a
:class:`Params` subclass whose fields carry their label, bounds and whether they change results),
the artefacts it caches, its cost model and its manifest notes. Config validation, the CLI's flags,
the studio's controls, the cache keys, the estimate and the exporter all read this. Nothing here
imports torch, so the studio's web process can read the registry without paying for it.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import DistillConfig


def param(default: Any, label: str, hint: str = "", *, minimum: Optional[float] = None, maximum: Optional[float] = None,
          positive: bool = False, semantic: bool = True) -> Any:
    """A method hyper-parameter: its default, the label and one-line hint front ends show, its bounds
    (``minimum`` and ``maximum`` inclusive, ``positive``: > 0), and whether it changes what is computed
    (``semantic=False``: only how, e.g. memory strategy; such a field enters no cache key)."""
    return field(default=default, metadata={"label": label, "hint": hint, "minimum": minimum, "maximum": maximum,
                                            "positive": positive, "semantic": semantic})


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


def base_type(t: Any) -> tuple[Any, bool]:
    """(type without Optional, whether None is allowed)."""
    args = typing.get_args(t)
    if typing.get_origin(t) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return t, False


def check_value(name: str, value: Any, t: Any, meta: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming the fix unless ``value`` fits type ``t`` and the field's bounds."""
    t, optional = base_type(t)
    unset = ", or leave it unset" if optional else ""
    if value is None:
        if not optional:
            raise ConfigError(f"{name} must be set", f"give {name} a value")
        return
    if typing.get_origin(t) is Literal:
        if value not in typing.get_args(t):
            raise ConfigError(f"unknown {name} '{value}'", f"use {' or '.join(map(str, typing.get_args(t)))}")
        return
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false (got {value!r})", f"set {name} to true or false")
        return
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be a whole number (got {value!r})", f"set {name} to a whole number{unset}")
    if t is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name} must be a number (got {value!r})", f"set {name} to a number{unset}")
    low = meta.get("minimum")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low:g} (got {value!r})", f"set {name} to {low:g} or more{unset}")
    high = meta.get("maximum")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high:g} (got {value!r})", f"set {name} to {high:g} or less{unset}")
    if meta.get("positive") and value <= 0:
        raise ConfigError(f"{name} must be > 0 (got {value!r})", f"set {name} to a positive number{unset}")


@dataclass
class Work:
    """Counted work of one stage's distillation, for the estimate (pdd_engine.estimate)."""

    calls: float = 0.0  # forward + backward calls through the network
    samples: float = 0.0  # samples through those calls
    transitions: int = 0  # networks first brought through the transition (stage 2 on)
    training: list[tuple[float, float, int]] = field(default_factory=list)  # (real examples, epochs, batch)


REGISTRY: dict[str, type["MethodSpec"]] = {}


def register(cls: type["MethodSpec"]) -> type["MethodSpec"]:
    """Class decorator: make a base method available to every front end under ``cls.name``."""
    if not cls.title or not cls.name or cls.name == "base":
        raise TypeError(f"{cls.__name__} needs a name and a title to be registered")
    from ..config import DistillConfig
    clash = set(cls.Params.names()) & {f.name for f in fields(DistillConfig)}
    if clash:
        raise TypeError(f"{cls.__name__}.Params redefines config field(s) {sorted(clash)}")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type["MethodSpec"]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'", f"choose one of {', '.join(REGISTRY)}")
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
        return {"matching_augmentation": cfg.dsa_strategy, "training_form": "stored images are the training images",
                "resolved": {}}
