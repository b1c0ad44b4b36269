"""PDD Studio's engine: Progressive Dataset Distillation over pluggable base methods.

    from pdd_engine import DistillConfig, run
    for event in run(DistillConfig(dataset="digits", method="dm", stages=5, ipc=10)):
        print(event)

This face is the one place that decides what loads: the errors load with it; everything else (the config,
the registries and torch with them; the service) loads when first named, so ``pdd_engine.service`` in the
studio's web process never imports torch.
"""

import importlib

from .errors import BundleError, ConfigError, DataUnavailable, PDDError
from .version import __version__

# name -> the module that defines it, imported on first use
_LAZY = {"DistillConfig": "config", "preset": "config", "PRESETS": "config", "run": "progressive",
         "distill": "progressive", "Service": "service"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pdd_engine' has no attribute '{name}'")


__all__ = ["DistillConfig", "preset", "PRESETS", "run", "distill", "Service", "PDDError", "ConfigError",
           "DataUnavailable", "BundleError", "__version__"]
