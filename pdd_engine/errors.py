"""User-facing errors: every one names the problem and the fix, in one line; and :func:`one_line`, which
makes text from outside (a shared bundle's manifest, an uploaded file's name) safe to show as one line."""

import re
import unicodedata
from typing import Optional

# Control, format, surrogate, private-use and unassigned characters, and line and paragraph separators:
# terminal escapes, bidirectional overrides, lone surrogates (which no UTF-8 encoder takes) and line breaks
# that would let a bundle's text forge lines of its own.
UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def one_line(text: object, limit: Optional[int] = None) -> str:
    """``text`` as one printable line: every character of an :data:`UNSHOWN` category becomes a space, runs of
    spaces one space, and the line is cut to ``limit`` characters (with "…" where cut)."""
    shown = re.sub(r"\s+", " ", "".join(" " if unicodedata.category(c) in UNSHOWN else c for c in str(text))).strip()
    return shown if limit is None or len(shown) <= limit else shown[:limit - 1] + "…"


class PDDError(Exception):
    """An error a user can act on. ``str(err)`` is ``"<problem>. Fix: <fix>"``."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(f"{self.problem}. Fix: {self.fix}.")

    def __reduce__(self):
        """Rebuilt from (problem, fix), so the error crosses process boundaries (the studio's helper
        processes answer with it) as itself, not as a TypeError of the unpickler."""
        return type(self), (self.problem, self.fix)


class ConfigError(PDDError):
    """A config value or combination is invalid."""


class DataUnavailable(PDDError):
    """A dataset cannot be loaded here (no local files, no internet)."""


class BundleError(PDDError):
    """A file is not a readable PDD Studio bundle."""


class MemoryBudgetError(PDDError):
    """The estimated peak memory of a step exceeds what this machine has."""


class CacheError(PDDError):
    """The cache directory cannot be used (not writable, full, or from a newer engine)."""


class Cancelled(Exception):
    """Raised inside the engine when the cancel token is set; finished stages stay cached."""
