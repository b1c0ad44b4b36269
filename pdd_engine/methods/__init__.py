"""Base methods behind one interface (:class:`~pdd_engine.methods.base.Method`)."""

from .base import Method, StageContext
from .dm import DM
from .mtt import MTT

REGISTRY: dict[str, type[Method]] = {"dm": DM, "mtt": MTT}


def get_method(name: str) -> type[Method]:
    return REGISTRY[name]


__all__ = ["Method", "StageContext", "REGISTRY", "get_method"]
