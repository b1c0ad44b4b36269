"""Dataset sources, one file each: :mod:`.builtin` (digits, MNIST, the torchvision sets) and :mod:`.userdata`
(your own folders, zips and IDX files). Each registers a :class:`~pdd_engine.registry.DatasetSpec`, which
config validation, the CLI, the studio's menu, the estimate and the exporter read; a new source is one
file imported here.
"""

from ..registry import DATASETS, NORMALISATION, DatasetSpec, Loader, find, named, register_dataset
from . import builtin, userdata  # noqa: F401  (they register themselves)

__all__ = ["DATASETS", "NORMALISATION", "DatasetSpec", "Loader", "find", "named", "register_dataset"]
