"""Every ``PDD_*`` environment variable (and the studio's port): declared once here, parsed by one function.

A bad value is one line that names the variable and the fix (never a ValueError traceback at import). The
declarations are data, so the docs' limits table and ``pdd limits`` list exactly what is read. The
per-setting server maxima (``PDD_MAX_ITERATIONS``, ...) are declared with their settings
(:func:`pdd_engine.registry.setting` and ``param``) and parsed by :func:`cap`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import ConfigError

HOME = Path.home() / ".cache" / "pdd_studio"


@dataclass(frozen=True)
class Variable:
    name: str
    kind: type  # int, float, bool, str or Path
    default: Any
    doc: str
    minimum: Optional[float] = None  # numbers: the smallest value that makes sense (inclusive)
    group: str = "server"  # "server", "limit" (a bound on untrusted input or on one visitor), "data"


VARIABLES: dict[str, Variable] = {v.name: v for v in [
    Variable("PDD_CACHE_DIR", Path, HOME / "cache", "where finished stages, evaluations and experts are cached", group="data"),
    Variable("PDD_CACHE_GB", float, 4.0, "size of the stage cache in GiB (least recently used entries go first; run "
             "records and ownership live apart and never go)", minimum=0.01, group="data"),
    Variable("PDD_DATA_DIR", Path, HOME / "data", "where built-in datasets live (MNIST's IDX files, torchvision's)",
             group="data"),
    Variable("PDD_EXPORT_DIR", Path, None, "where the studio writes bundles (default: beside the cache)", group="data"),
    Variable("PDD_UPLOAD_DIR", Path, None, "where the studio keeps uploaded datasets (default: beside the cache)",
             group="data"),
    Variable("PDD_EXECUTOR", str, "local", "where a stage's independent units run: local or ray"),
    Variable("PDD_MAX_JOBS", int, 1, "engines running at once (other runs wait in line)", minimum=1),
    Variable("PDD_SIDE_LANE", bool, True, "on a CPU with two or more torch threads, a run computes its random "
             "curriculum and base comparison in a second thread, half the threads each, while the stages distil"),
    Variable("PDD_ENGINE_THREADS", int, 0, "torch threads per engine process (0: the cores less one, shared by the "
             "runs at once; at least two for a lone run on 2+ cores, one per lane)", minimum=0),
    Variable("PDD_UI_CONCURRENCY", int, 8, "page requests served at once", minimum=1),
    Variable("GRADIO_SERVER_PORT", int, 7860, "the studio's port (Gradio's own variable)", minimum=1),
    Variable("PDD_PUBLIC_RUNS", bool, False, "every visitor sees, downloads and deletes every run (a single-user or "
             "teaching server)"),
    Variable("PDD_STAGEWISE", bool, False, "run each stage as one call (how ZeroGPU Spaces lend a GPU; on by itself there)"),
    Variable("PDD_GPU_SECONDS", int, 120, "ZeroGPU: seconds of GPU asked for each stage call", minimum=1),
    Variable("PDD_EXPORT_KEEP_HOURS", float, 24.0, "exported bundles older than this are deleted (they export again)",
             minimum=0),
    Variable("PDD_EXPORT_MAX_GB", float, 2.0, "the export folder is pruned, oldest first, to this size", minimum=0),
    Variable("PDD_UPLOAD_KEEP_HOURS", float, 24.0 * 7, "uploaded datasets older than this are deleted", minimum=0),
    Variable("PDD_UPLOAD_MAX_GB", float, 5.0, "the upload folder is pruned, oldest first, to this size", minimum=0),
    Variable("PDD_MAX_RUN_HOURS", float, 2.0, "the studio refuses a run whose estimate is longer (the CLI has no cap)",
             minimum=0, group="limit"),
    Variable("PDD_MAX_RUNS_PER_VISITOR", int, 2, "runs one visitor may have queued or running at once", minimum=1,
             group="limit"),
    Variable("PDD_MAX_QUEUED", int, 20, "runs (and, apart, bundle evaluations) queued or running on the whole server, every visitor together",
             minimum=1, group="limit"),
    Variable("PDD_MAX_RUN_GB", float, 0.0, "the studio refuses a run whose estimated peak memory is larger, in GiB "
             "(0: 80 % of this machine's memory)", minimum=0, group="limit"),
    Variable("PDD_MAX_EVALUATIONS_PER_VISITOR", int, 1, "bundle evaluations one visitor may have waiting or running",
             minimum=1, group="limit"),
    Variable("PDD_MAX_FILES", int, 100_000, "files in one uploaded dataset", minimum=1, group="limit"),
    Variable("PDD_MAX_BYTES", int, 2 * 2 ** 30, "bytes of one uploaded dataset or bundle, uncompressed", minimum=1,
             group="limit"),
    Variable("PDD_MAX_FILE_BYTES", int, 64 * 2 ** 20, "bytes of one file inside an upload or bundle, uncompressed",
             minimum=1, group="limit"),
    Variable("PDD_MAX_SIDE", int, 4096, "pixels per side of one uploaded image (larger ones are skipped)", minimum=4,
             group="limit"),
    Variable("PDD_MAX_PIXELS", int, 2 ** 28, "pixels of all uploaded images together, from their headers", minimum=1,
             group="limit"),
    Variable("PDD_MAX_DECODED_BYTES", int, 2 * 2 ** 30, "bytes of one dataset once decoded to its image size "
             "(images x side² x channels x 4)", minimum=1, group="limit"),
    Variable("PDD_MAX_MANIFEST_BYTES", int, 2 ** 20, "bytes of a bundle's manifest.json", minimum=1, group="limit"),
    Variable("PDD_MAX_BUNDLE_STAGES", int, 100, "stage entries in one bundle", minimum=1, group="limit"),
]}


def env(name: str, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The value of declared variable ``name``: its default when unset or empty, else parsed, or a
    one-line ConfigError naming the variable and the fix."""
    v = VARIABLES[name]
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return v.default
    return parse(name, raw, v.kind, v.minimum, v.default)


def parse(name: str, raw: str, kind: type, minimum: Optional[float], default: Any) -> Any:
    """``raw`` as ``kind`` for variable ``name`` (at least ``minimum``), or a one-line ConfigError."""
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not true or false", f"set {name} to 1 or 0, or unset it")
    if kind is Path:
        return Path(raw).expanduser()
    if kind is str:
        return raw
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or value in (float("inf"), float("-inf")):  # NaN and infinities too
        raise ConfigError(f"{name}={raw!r} is not {what}", f"set {name} to {what}, or unset it for {default}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r} is below {minimum:g}", f"set {name} to {minimum:g} or more, or unset it "
                          f"for {default}")
    return value


def cap_variable(setting: str) -> str:
    """The variable that sets a setting's server maximum (``iterations`` -> ``PDD_MAX_ITERATIONS``)."""
    return f"PDD_MAX_{setting.upper()}"


def cap(setting: str, default: float, environ: Optional[Mapping[str, str]] = None) -> float:
    """A setting's server maximum: its declared default, or ``PDD_MAX_<SETTING>``."""
    name = cap_variable(setting)
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    return default if not raw else parse(name, raw, type(default), 1, default)


def cache_dir() -> Path:
    return env("PDD_CACHE_DIR")


def data_root() -> Path:
    return env("PDD_DATA_DIR")


# How long an OpenMP thread of torch spins before it sleeps, for the CLI: libgomp's own default (300,000) is
# for a machine with nothing else to do, and beside other work its threads wait for descheduled neighbours at
# every operation; OMP_WAIT_POLICY=PASSIVE is the fastest beside other work but slower alone. Measured by
# python -m bench.speed --only openmp (docs/scaling.md, "Threads").
SPIN_COUNT = 10_000


def openmp_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP wait settings the CLI adds to its environment before torch loads OpenMP (which reads
    them once, then): a short spin, so that threads sharing the cores with other work do not wait for each
    other at every operation, and nothing where the user set a wait policy or spin count of their own."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
