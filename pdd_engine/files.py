"""Files a user gets (bundles, stage archives, PNGs) are written whole or not at all, and a write that fails
is one line naming the file and the fix.

A reader (a browser downloading, an export reused later) never sees a half-written file: each is written
under a temporary name beside its place and renamed over it at the end (atomic on one file system); a
failed write removes the temporary file.
"""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PDDError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def atomic(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed to ``path`` when the block ends. A failure
    leaves no file (and no temporary one) and, for a disk or permission problem, is a one-line PDDError
    naming ``path`` and how to fix it (``flag``: what the user sets the path with)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(e, path, flag) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_error(e: OSError, path: Path, flag: str) -> PDDError:
    """What a failed write of ``path`` means to the user, in one line."""
    if e.errno in FULL:
        return PDDError(f"{path.name} could not be written: the disk holding {path.parent} is full",
                        f"free space there, or point {flag} at another disk")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PDDError(f"{path.name} could not be written: {path.parent} is not writable",
                        f"point {flag} at a folder you can write")
    return PDDError(f"{path.name} could not be written ({e.strerror or type(e).__name__})",
                    f"check {path.parent}, or point {flag} elsewhere")
