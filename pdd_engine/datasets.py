"""The dataset registry: one spec per dataset source, read by config validation, the CLI, the
studio's menu, the estimate and the exporter.

A source registers a :class:`DatasetSpec` where its loader lives (built-in sets in
:mod:`pdd_engine.data`, your own zips and IDX folders in :mod:`pdd_engine.userdata`). A spec names
either one dataset (``mnist``) or a scheme for many (``folder:``, followed by a path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .errors import ConfigError

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
    _load_builtins()
    return [n for n, s in DATASETS.items() if not s.scheme]


def find(name: str) -> DatasetSpec:
    """The spec of a config's ``dataset`` value, or a ConfigError that lists the choices."""
    _load_builtins()
    spec = DATASETS.get(name) or next((s for n, s in DATASETS.items() if s.scheme and name.startswith(n)), None)
    if spec is None:
        schemes = " / ".join(f"'{n}/path'" for n, s in DATASETS.items() if s.scheme)
        raise ConfigError(f"unknown dataset '{name}'",
                          f"choose one of {', '.join(named())}, or {schemes} for your own data")
    return spec


def _load_builtins() -> None:
    from . import data  # noqa: F401  (registers the built-in sets and, through userdata, the schemes)
