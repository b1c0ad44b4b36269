"""A bundle's manifest is untrusted input: its shape is checked before use, it never names a place
on the reader's disk, and the writer's own paths never leave the machine.

- :func:`check` validates a manifest against :data:`SCHEMA` (and every stage entry against
  :data:`STAGE_ENTRY`), so a malformed one is a one-line :class:`BundleError`, not a traceback.
- :func:`portable` strips the exporter's local paths (user-data locations, data and cache folders,
  the home folder) from every string before the manifest is written.
- :func:`dataset_to_read` decides what dataset an evaluation reads: a built-in one by name, or the
  user's own data from a path the *user* gives (``--data``), never a path the manifest gives.
- :func:`evaluation_table` lays out a cross-architecture evaluation beside the manifest's own
  accuracies (the CLI's table and the studio's Evaluate tab).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

from .errors import BundleError, one_line
from .datasets import find
from .settings import data_root

Number = (int, float)
OPTIONAL_DICT = (dict, type(None))

SCHEMA: dict[str, Any] = {
    "format": str, "format_version": int, "config": dict, "method": str, "stages": int, "ipc": int,
    "dataset": {"name": str, "classes": list, "channels": int, "size": int, "fingerprint": str},
    "evaluation": {"epochs": int, "models": int, "lr": Number, "batch": int, "dsa_strategy": str, "seed": int,
                   "family": str, "depth": int, "width": int, "norm": str, "momentum": Number, "weight_decay": Number},
    "stage_entries": list, "files": dict,
}
ACCURACY: dict[str, Any] = {"mean": Number, "std": Number}  # what tables read of an accuracy entry
STAGE_ENTRY: dict[str, Any] = {
    "stage": int, "images_per_class": int, "cumulative_images_per_class": int, "stored": str, "union": str,
    "eval_lr": Number, "accuracy": OPTIONAL_DICT, "random_subset_accuracy": OPTIONAL_DICT,
}


def _check(value: Any, schema: Any, where: str) -> Optional[str]:
    """The first mismatch between ``value`` and ``schema`` (a type, a tuple of types or a dict of them)."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where or 'the manifest'} should be an object"
        for key, sub in schema.items():
            if key not in value:
                return f"{where + '.' if where else ''}{key} is missing"
            if (err := _check(value[key], sub, f"{where + '.' if where else ''}{key}")) is not None:
                return err
        return None
    if isinstance(value, bool) or not isinstance(value, schema):
        names = " or ".join(t.__name__ for t in (schema if isinstance(schema, tuple) else (schema,)))
        return f"{where} should be {names.replace('NoneType', 'null')}, not {type(value).__name__}"
    return None


MAX_COUNT = 10 ** 6  # a stage number or image count in a manifest (tables and plots take them as they are)


def entry_numbers(entry: dict[str, Any], where: str) -> Optional[str]:
    """The first number of a stage entry that tables and plots could not show: an accuracy that is not a
    fraction (a list as its mean was scaled in memory, a 400-digit integer overflowed the float it is shown
    as), a stage or an image count out of range (plotly refuses integers past 64 bits)."""
    for k in ("accuracy", "random_subset_accuracy"):
        if entry[k] is None:
            continue
        if (err := _check(entry[k], ACCURACY, f"{where}.{k}")) is not None:
            return err
        bad = next((f for f in ("mean", "std") if not 0 <= entry[k][f] <= 1), None)
        if bad is not None:
            return f"{where}.{k}.{bad} should be a fraction in [0, 1]"
    bad = next((k for k in ("stage", "images_per_class", "cumulative_images_per_class")
                if not 0 < entry[k] <= MAX_COUNT), None)
    return None if bad is None else f"{where}.{bad} should be between 1 and {MAX_COUNT:,}"


def check(manifest: Any, bundle: str, fix: str) -> dict[str, Any]:
    """``manifest`` if it has the shape a bundle's manifest must have, else a one-line BundleError."""
    err = _check(manifest, SCHEMA, "")
    if err is None:
        for i, entry in enumerate(manifest["stage_entries"]):
            if (err := _check(entry, STAGE_ENTRY, f"stage_entries[{i}]")) is not None:
                break
            if (err := entry_numbers(entry, f"stage_entries[{i}]")) is not None:
                break
            missing = [entry[k] for k in ("stored", "union") if entry[k] not in manifest["files"]]
            if missing:
                err = f"stage_entries[{i}] names {missing[0]}, which the manifest's file list does not hold"
                break
    if err is None and not manifest["stage_entries"]:
        err = "stage_entries is empty"
    if err is None and any(not isinstance(h, str) for h in manifest["files"].values()):
        err = "files should map names to sha256 strings"
    if err is not None:
        raise BundleError(f"the manifest of {bundle} is malformed: {err}", fix)
    return manifest


def local_paths(cfg_dict: dict[str, Any]) -> list[str]:
    """The exporter's places that a manifest could otherwise carry, longest first."""
    places = [cfg_dict.get("data_root"), cfg_dict.get("cache_dir"), str(data_root()), str(Path.home())]
    name = cfg_dict.get("dataset", "")
    spec = find(name)
    if spec.scheme:
        where = Path(name[len(spec.name):]).expanduser()
        places += [str(where.parent), str(where.resolve().parent)]
    return sorted({p.rstrip("/") for p in places if p and p.rstrip("/")}, key=len, reverse=True)


def portable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the exporter's paths stripped: user data is named by its file name alone
    (``folder:cats.zip``), data and cache folders are dropped, and other strings lose those prefixes."""
    places = local_paths(manifest["config"])

    def strip(value: Any) -> Any:
        if isinstance(value, str):
            for p in places:
                value = "." if value == p else value.replace(p + "/", "")
            return value
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(manifest)
    out["config"] = {**out["config"], "data_root": None, "cache_dir": None}
    return out


def dataset_to_read(name: str, data: Optional[str]) -> str:
    """The ``dataset`` an evaluation of a bundle made on ``name`` reads: built-in sets by name; the
    user's own data only from ``data``, the path the user gives (the manifest's path is never used)."""
    spec = find(name)
    if not spec.scheme:
        if data:
            raise BundleError(f"this bundle was made on the built-in dataset '{name}', so --data does not apply",
                              "leave --data out (use --data-root to say where the built-in data lives)")
        return name
    if not data:
        raise BundleError(f"this bundle was made on your own data ('{name}'); a bundle never says where to read it",
                          "give the same folder or .zip with --data PATH")
    return spec.name + data


def manifest_arch(manifest: dict[str, Any]) -> str:
    """The architecture a bundle was evaluated on, in :func:`~pdd_engine.evaluate.parse_arch` form."""
    e = manifest["evaluation"]
    return f"{e['family']}-d{e['depth']}-w{e['width']}"


def evaluation_table(manifest: dict[str, Any], results: list[tuple[str, list[list[float]]]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a cross-architecture evaluation: the manifest's own accuracies first,
    then one row per ``(architecture, per-stage accuracies)`` (mean ± std %, one column per stage)."""
    entries = manifest["stage_entries"]
    headers = ["architecture"] + [f"stage {e['stage']} (IPC {e['cumulative_images_per_class']})" for e in entries]
    pm = lambda m, s: f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    own = [pm(e["accuracy"]["mean"], e["accuracy"]["std"]) if e.get("accuracy") else "–" for e in entries]
    rows = [[f"recorded in the bundle ({manifest_arch(manifest)})"] + own]
    rows += [[arch or "same as exported"] + [pm(statistics.fmean(a), statistics.pstdev(a)) for a in accs] for arch, accs in results]
    return headers, rows


WARNING_CHARS = 600  # a bundle's text shown to a user is bounded (a manifest is untrusted input)


def stage_warnings(manifest: dict[str, Any]) -> list[str]:
    """"stage i: ..." for each stage whose run warned of its matching (``matching_warning``: an unstable MTT
    matching), so whoever evaluates a shared bundle learns it too. A manifest is untrusted: only text is
    taken, cut to ``WARNING_CHARS``; a bundle from before the field has none."""
    out = []
    for e in manifest["stage_entries"]:
        text = e.get("matching_warning") if isinstance(e, dict) else None
        if isinstance(text, str) and (text := one_line(text.removeprefix("warning: "), WARNING_CHARS)):
            stage = e.get("stage")
            out.append(f"stage {stage if isinstance(stage, int) and 0 < stage <= MAX_COUNT else '?'}: {text}")
    return out
