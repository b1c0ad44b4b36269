"""Base methods behind one interface (:class:`~pdd_engine.methods.base.Method`).

Each method is one file whose class registers itself (``@register``) with its spec
(:class:`~pdd_engine.registry.MethodSpec`): name, title, default image lr, its own ``Params``
dataclass, what it caches, its cost model and manifest notes. Everything else (config validation,
CLI, studio, cache keys, estimate, export, bench) reads :data:`REGISTRY`, so a new method needs no
edit outside its own file.
"""

from ..registry import REGISTRY, MethodSpec, NoParams, Params, Work, all_params, get_method, owners, param, register
from .base import Method, StageContext
from . import dm, gradmatch, mtt  # noqa: F401  (they register themselves)


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


__all__ = ["Method", "MethodSpec", "Params", "NoParams", "param", "StageContext", "Work", "REGISTRY", "register",
           "get_method", "method_names", "owners", "all_params"]
