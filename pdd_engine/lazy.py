"""Import torch on first use, not on import.

The studio's web process reads the registries (methods, datasets), builds and validates configs,
does the estimate's arithmetic and lists runs, and none of that touches a tensor. Importing torch
costs it about 3 s of start-up and a few hundred MB, so the modules it reads name torch through
these stand-ins: the real module is imported the first time an attribute is read (in the engine
process, at once). ``tests/test_app.py`` checks that the web process never imports torch.

A stand-in must not be touched at import time (a base class, a decorator, a default value):
those places import the real module inside the function that needs it.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A module that imports ``name`` when one of its attributes is first read."""

    def __init__(self, name: str):
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later reads are plain attribute hits
        return getattr(module, attr)


torch: Any = LazyModule("torch")
nn: Any = LazyModule("torch.nn")
F: Any = LazyModule("torch.nn.functional")
