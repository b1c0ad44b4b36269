"""Bytes from outside (an uploaded dataset, a bundle, a folder the user names) are bounded before they are
read and refused in one line when bad.

- :class:`Limits`: what reading one dataset or bundle may cost, each bound raised (or lowered) by its
  ``PDD_MAX_*`` variable, which every refusal names.
- :class:`SafeZip`: the one reader for every zip from outside. The path must be a regular file; entry
  names are normalised (``\\`` as ``/``, as zips made on Windows write them) and an entry that points
  outside the archive, or a name given twice, is refused; the declared sizes are checked per entry and
  in total before anything is read, and reading never inflates past them.
- :func:`regular_files`: a folder's files, never a device, pipe or link to one (``/dev/zero`` would read
  forever).
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO, Iterator, Optional

from .errors import ConfigError, PDDError
from .settings import env

# Limits field -> the variable that sets it (declared, with its default, in pdd_engine.settings)
VARIABLES = {"files": "PDD_MAX_FILES", "total_bytes": "PDD_MAX_BYTES", "entry_bytes": "PDD_MAX_FILE_BYTES",
             "side": "PDD_MAX_SIDE", "pixels": "PDD_MAX_PIXELS", "decoded_bytes": "PDD_MAX_DECODED_BYTES",
             "manifest_bytes": "PDD_MAX_MANIFEST_BYTES", "bundle_stages": "PDD_MAX_BUNDLE_STAGES"}
class EncryptedEntry(ValueError):
    """A zip entry with the "encrypted" flag: never read (zipfile would raise RuntimeError for it)."""


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError)  # corrupt or unsupported


@dataclass(frozen=True)
class Limits:
    """What reading one user dataset or bundle may cost."""

    files: int  # entries in one zip or folder
    total_bytes: int  # all of them, uncompressed (as a zip's directory declares them)
    entry_bytes: int  # one of them, uncompressed: a zip bomb is one huge entry
    side: int  # pixels per side of one image; larger ones are skipped
    pixels: int  # all images together, from their headers, before any is decoded
    decoded_bytes: int  # a dataset once decoded to its image size (images x side² x channels x 4)
    manifest_bytes: int  # a bundle's manifest.json
    bundle_stages: int  # stage entries in one bundle

    @classmethod
    def from_env(cls, environ=None, error: type[PDDError] = ConfigError) -> "Limits":
        """The limits the environment sets (each variable's default otherwise); a bad value is ``error``."""
        try:
            return cls(**{f.name: env(VARIABLES[f.name], environ) for f in fields(cls)})
        except ConfigError as e:
            raise error(e.problem, e.fix) from None


def over_limit(problem: str, limit: str, value: str, error: type[PDDError], fix: str) -> PDDError:
    """The refusal for a limit: what is over it, and the two fixes (``fix``, or a raised limit)."""
    return error(f"{problem}, over the limit of {value} ({VARIABLES[limit]})",
                 f"{fix}, or raise the limit: set {VARIABLES[limit]} in the environment of the CLI or the studio's server")


def size_text(n: float) -> str:
    """Bytes as people read them: 64 MiB, 1.5 GiB, 300 bytes."""
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB" if n >= 2 ** 20 else f"{n:.0f} bytes"


def regular(path: Path, error: type[PDDError], fix: str) -> Path:
    """``path`` if it is a regular file (not a device, pipe or socket, even behind a link), else one line."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{path.name or path} cannot be read ({e.strerror})", fix) from None
    if not stat.S_ISREG(mode):
        raise error(f"{path.name or path} is not a regular file", fix)
    return path


def regular_files(folder: Path) -> Iterator[Path]:
    """The regular files under ``folder``, sorted; links are followed only to regular files, and a folder
    is walked once (a link back up does not loop)."""
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        key = os.stat(root).st_ino
        if key in seen:
            continue
        seen.add(key)
        for name in sorted(files):
            p = Path(root) / name
            try:
                if stat.S_ISREG(os.stat(p).st_mode):
                    yield p
            except OSError:
                continue


@dataclass(frozen=True)
class Member:
    name: str  # normalised: "/" between parts, no leading "./"
    size: int  # declared, uncompressed
    info: zipfile.ZipInfo


class SafeZip:
    """A zip from outside, opened within ``limits``; ``what`` names it in every refusal ("bundle x.zip")."""

    def __init__(self, path: str | Path, limits: Limits, error: type[PDDError], fix: str, what: Optional[str] = None):
        self.path, self.limits, self.error, self.fix = Path(path), limits, error, fix
        self.what = what or self.path.name
        regular(self.path, error, fix)
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise error(f"{self.what} is not a zip file (or is damaged)", fix) from None
        if len(infos) > limits.files:
            raise over_limit(f"{self.what} holds {len(infos):,} entries", "files", f"{limits.files:,}", error,
                             "use fewer files")
        self.members: dict[str, Member] = {}
        for info in infos:
            name = info.filename.replace("\\", "/")  # zips made on Windows
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
                raise error(f"the entry '{info.filename}' of {self.what} points outside the archive",
                            "re-create the zip with relative paths (class_name/image.png)")
            name = "/".join(p for p in parts if p != ".")
            if info.is_dir():
                continue
            if name in self.members:
                raise error(f"{self.what} holds '{name}' twice", "re-create the zip with each file once")
            if info.file_size > limits.entry_bytes:
                raise over_limit(f"'{name}' in {self.what} is {size_text(info.file_size)} uncompressed", "entry_bytes",
                                 f"{size_text(limits.entry_bytes)} per file", error, "use smaller files")
            self.members[name] = Member(name, info.file_size, info)
        total = sum(m.size for m in self.members.values())
        if total > limits.total_bytes:
            raise over_limit(f"{self.what} holds {size_text(total)} uncompressed", "total_bytes",
                             size_text(limits.total_bytes), error, "use less data")

    def read(self, name: str, cap: Optional[int] = None, variable: str = "entry_bytes") -> bytes:
        """One entry's bytes; ``cap``: a tighter bound on it (refused, with ``variable``, over it). zipfile
        stops inflating at the declared size, which was checked when the zip was opened."""
        m = self.members[name]
        if cap is not None and m.size > cap:
            raise over_limit(f"'{name}' in {self.what} is {size_text(m.size)}", variable, size_text(cap), self.error,
                             "use a smaller file")
        try:
            with self.entry_stream(m.info) as f:
                return f.read()
        except EncryptedEntry:
            raise self.error(f"'{name}' in {self.what} is encrypted", "re-create the zip without a password") from None
        except ZIP_ERRORS + (OSError,) as e:
            raise self.error(f"'{name}' in {self.what} is damaged ({type(e).__name__})", self.fix) from None

    def entry_stream(self, info: zipfile.ZipInfo) -> IO[bytes]:
        """An entry as a file, inflated as far as it is read (never past its declared size); EncryptedEntry (a
        ZIP_ERRORS) for an encrypted one."""
        if info.flag_bits & 0x1:
            raise EncryptedEntry(f"'{info.filename}' is encrypted")
        return self.zip.open(info)

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
