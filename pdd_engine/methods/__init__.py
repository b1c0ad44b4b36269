"""Base methods behind one interface (:class:`~pdd_engine.methods.base.Method`)."""

from .base import Method, StageContext
from .dm import DM
from .gradmatch import DC, IDC, DSAMatching
from .mtt import MTT

REGISTRY: dict[str, type[Method]] = {"dm": DM, "mtt": MTT, "dc": DC, "dsa": DSAMatching, "idc": IDC}


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        from ..errors import ConfigError
        raise ConfigError(f"unknown method '{name}'", f"choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["Method", "StageContext", "REGISTRY", "get_method"]
