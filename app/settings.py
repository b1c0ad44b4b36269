"""The server's numeric settings from the environment. A bad value stops the start with one line that
names the variable and the fix, instead of a ValueError traceback."""

from __future__ import annotations

import os
from typing import Union

from pdd_engine.errors import PDDError


def env_number(name: str, default: Union[int, float], kind: type = int) -> Union[int, float]:
    """``$name`` as ``kind`` (int or float), or ``default`` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise PDDError(f"{name}={raw!r} is not {what}", f"set {name} to {what}, or unset it for {default}") from None
