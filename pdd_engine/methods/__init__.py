"""Base methods behind one interface (:class:`~pdd_engine.methods.base.Method`).

Each method is one file whose class registers itself (``@register``) with its spec: name, title,
default image lr, the config fields it reads, what it caches, its cost model and manifest notes.
Everything else (config validation, CLI, studio, cache keys, estimate, export, bench) reads
:data:`REGISTRY`, so a new method needs no edit outside its own file.
"""

from .base import REGISTRY, Method, StageContext, Work, register
from . import dm, gradmatch, mtt  # noqa: E402,F401  (they register themselves)


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        from ..errors import ConfigError
        raise ConfigError(f"unknown method '{name}'", f"choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


__all__ = ["Method", "StageContext", "Work", "REGISTRY", "register", "get_method", "method_names"]
