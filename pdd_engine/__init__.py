"""PDD Studio's engine: Progressive Dataset Distillation over pluggable base methods.

    from pdd_engine import DistillConfig, run
    for event in run(DistillConfig(dataset="digits", method="dm", stages=5, ipc=10)):
        print(event)
"""

__version__ = "0.1.0"

from .config import PRESETS, DistillConfig, preset  # noqa: E402
from .errors import BundleError, ConfigError, DataUnavailable, PDDError  # noqa: E402


def __getattr__(name: str):
    """``run`` and ``distill`` load the stage loop (and torch) when first used, so that reading
    configs, registries and run records (the studio's web process) never imports torch."""
    if name in ("run", "distill"):
        from . import progressive
        return getattr(progressive, name)
    raise AttributeError(f"module 'pdd_engine' has no attribute '{name}'")

__all__ = ["DistillConfig", "preset", "PRESETS", "run", "distill", "PDDError", "ConfigError",
           "DataUnavailable", "BundleError", "__version__"]
