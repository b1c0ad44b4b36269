"""PDD Studio's engine: Progressive Dataset Distillation over pluggable base methods.

    from pdd_engine import DistillConfig, run
    for event in run(DistillConfig(dataset="digits", method="dm", stages=5, ipc=10)):
        print(event)
"""

__version__ = "0.1.0"

from .config import PRESETS, DistillConfig, preset  # noqa: E402
from .errors import BundleError, ConfigError, DataUnavailable, PDDError  # noqa: E402
from .progressive import distill, run  # noqa: E402

__all__ = ["DistillConfig", "preset", "PRESETS", "run", "distill", "PDDError", "ConfigError",
           "DataUnavailable", "BundleError", "__version__"]
