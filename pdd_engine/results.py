"""Benchmark results as data: the rows ``bench/quality.py`` appends to ``bench/results/quality.csv``, read back
for the docs' tables (``bench/report.py``) and the studio's Results tab (through the service).

A row is one measured setting (dataset, method, P, IPC, protocol, the budget, the arithmetic, the seeds)
with PDD's accuracy beside its three comparisons: the base method alone (P = 1), those P = 1 images trained
for as many epochs as PDD's curriculum, and its own random curriculum; per-stage means; wall time, machine,
commit and date. Pure standard library: the studio's web process reads it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional

from .strategy import describe

# One row per measured setting; SETTING columns identify it (a row with the same values is not measured again).
# ``augmentation`` is the DSA strategy that ran (``auto`` resolved); ``extra`` the other settings given to the bench.
SETTING = ["dataset", "method", "stages", "ipc", "schedule", "protocol", "width", "max_train", "iterations",
           "eval_epochs", "eval_models", "precision", "eval_precision", "augmentation", "seeds", "extra"]
MEASURED = ["mean", "std", "random_mean", "random_std", "base_mean", "base_std", "base_epochs_mean", "base_epochs_std",
            "stage_ipc", "stage_mean", "stage_std", "stage_random", "stage_base", "stage_base_epochs", "learned_lr",
            "wall_s", "peak_mb", "machine", "commit", "date"]
COLUMNS = SETTING + MEASURED


def read_rows(path: Path, columns: list[str] = COLUMNS) -> list[dict]:
    """The well-formed rows of a results CSV (every column present, no extra field); a damaged line (a
    killed writer, a bad merge) is left out, so a benchmark measures that setting again."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if None not in row and all(row.get(c) is not None for c in columns)]


def append_row(path: Path, columns: list[str], row: dict) -> None:
    """Append ``row`` (every column) as one line, with the header first in a new file."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        writer.writeheader()
    writer.writerow({c: row[c] for c in columns})
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


# Each finished seed of a row, kept beside the rows (bench/quality.py): a row longer than one sitting finishes over
# several, and a row's seeds can be read one by one (`pdd results --seeds N`).
SEED_KEY = [k for k in SETTING if k != "seeds"]  # a seed is the same measurement whichever seeds its row lists


def seeds_path(results: Path) -> Path:
    """Where a results CSV's seeds are kept: beside it (quality.csv: quality_seeds.jsonl)."""
    return results.with_name(f"{results.stem}_seeds.jsonl")


def seed_key(setting: dict, seed: int, machine: str) -> tuple:
    """A seed's identity: its row's setting (less the list of seeds), the seed, and the kind of machine it ran on
    (its GPU, or a CPU): a sitting on another CPU finishes a row a CPU began (the arithmetic is in the setting),
    never one a GPU began."""
    return (*(str(setting[k]) for k in SEED_KEY), str(seed), gpu_of({"machine": machine}) or "cpu")


def read_seeds(path: Path) -> dict[tuple, dict]:
    """The finished seeds (a child's output, with the ``machine`` it ran on) by :func:`seed_key`; a damaged line
    (a killed writer, a bad merge) is left out, so that seed runs again."""
    out = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            out[seed_key(rec["setting"], rec["seed"], rec["machine"])] = {**rec["result"], "machine": rec["machine"]}
        except (ValueError, KeyError, TypeError):
            continue
    return out


def append_seed(path: Path, setting: dict, seed: int, machine: str, commit: str, date: str, result: dict) -> None:
    """Append one finished seed (a ``bench/quality.py`` child's output) as one JSON line, after a newline if a
    killed writer left a partial one."""
    line = json.dumps({"setting": setting, "seed": seed, "machine": machine, "commit": commit, "date": date,
                       "result": result}, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:  # appends go to the end wherever the file is read
        end = f.seek(0, os.SEEK_END)
        f.seek(max(0, end - 1))
        torn = end > 0 and f.read(1) != b"\n"
        f.write((("\n" if torn else "") + line + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def row_seeds(row: dict, kept: dict[tuple, dict]) -> list[tuple[str, Optional[dict]]]:
    """Each seed a row lists, with what was kept of it (:func:`read_seeds`; None where it was not: a row
    measured before seeds were kept)."""
    kind = gpu_of(row) or "cpu"
    return [(s, kept.get((*(row[k] for k in SEED_KEY), s, kind))) for s in row["seeds"].split()]


def seed_cells(row: dict, result: dict) -> list[str]:
    """One kept seed as the seed table shows it: PDD, P = 1, P = 1 same epochs and random (%, the last stage),
    PDD per stage, its machine and wall seconds."""
    last = result["accuracies"][-1]
    p1 = int(row["stages"]) == 1
    pct = lambda v: "–" if v is None else f"{100 * v:.2f}"  # noqa: E731
    return [pct(last["mean"]), pct(last["mean"] if p1 else last.get("base_mean")),
            pct(last["mean"] if p1 else last.get("base_epochs_mean")), pct(last.get("random_mean")),
            " / ".join(pct(a["mean"]) for a in result["accuracies"]), result.get("machine", ""),
            f"{result['seconds']:.0f}"]


def complete(row: dict) -> bool:
    """Whether a row has every comparison its protocol gives (a paper row measured before runs compared
    themselves with their base method trained as long has not, and is measured again)."""
    return row["stages"] == "1" or row["protocol"] != "paper" or bool(row["base_mean"] and row["base_epochs_mean"])


def number(cell: str) -> Optional[float]:
    return None if cell in ("", "nan", None) else float(cell)


def cells(cell: str) -> list[Optional[float]]:
    """A ``;``-separated cell as numbers (nan: not measured at that stage)."""
    return [number(v) for v in cell.split(";")] if cell else []


def comparisons(row: dict, rows: list[dict]) -> dict[str, tuple[Optional[float], float]]:
    """(mean, std) in % of PDD, P = 1, P = 1 trained as long, and the own random curriculum for ``row``. A
    matched-protocol row takes its P = 1 from the P = 1 row of the same setting (the full budget, which is
    also its epoch-matched comparison: E/P x P = E)."""
    own = lambda r, k: (number(r[f"{k}mean"]), number(r[f"{k}std"]) or 0.0)  # noqa: E731
    out = {"pdd": own(row, ""), "random": own(row, "random_"), "base": own(row, "base_"),
           "epochs": own(row, "base_epochs_")}
    same = ("dataset", "method", "ipc", "width", "max_train", "eval_models", "precision", "eval_precision", "augmentation",
            "seeds", "extra")
    p = int(row["stages"])
    split = p if row["protocol"] == "matched" else 1
    one = next((r for r in reversed(rows) if r["stages"] == "1" and all(r[k] == row[k] for k in same)
                and max(1, int(r["iterations"]) // split) == int(row["iterations"])
                and max(1, int(r["eval_epochs"]) // split) == int(row["eval_epochs"])), None)
    if row["protocol"] == "matched":
        out["base"] = out["epochs"] = own(one, "") if one else (None, 0.0)
    elif out["base"][0] is None and one is not None:  # a row measured before runs compared themselves: the P = 1
        out["base"] = own(one, "")  # row of the same setting is the same computation (the same cached stages)
    return out


def margins(row: dict, rows: list[dict]) -> Optional[list[tuple[float, float]]]:
    """PDD's margin over each of its three comparisons (P = 1, P = 1 same epochs, own random), in points, with
    the larger of the two standard deviations beside it; None for P = 1 or where a comparison is missing."""
    c = comparisons(row, rows)
    if int(row["stages"]) == 1 or any(v[0] is None for v in c.values()):
        return None
    return [(c["pdd"][0] - c[k][0], max(c["pdd"][1], c[k][1])) for k in ("base", "epochs", "random")]


def gain(row: dict, rows: list[dict]) -> Optional[float]:
    """PDD's smallest margin over its three comparisons, in points (None where one is missing): how a row
    shows PDD's point, for choosing the default and the showcase."""
    m = margins(row, rows)
    return None if m is None else min(d for d, _ in m)


def clear_gain(row: dict, rows: list[dict]) -> Optional[float]:
    """PDD's smallest margin over its three comparisons beyond the seeds' spread, in points: each margin less
    the larger of the two standard deviations (positive where the tables mark it ✓). A comparison whose own
    seeds scatter (a P = 1 with one unstable seed, 93.1 ± 3.2) then cannot make a row look better than it is,
    as the plain smallest margin let it (None where a comparison is missing)."""
    m = margins(row, rows)
    return None if m is None else min(d - spread for d, spread in m)


# The showcase preset must finish within about a quarter of an hour on 2 cores. A row's wall s is one seed
# on one thread beside the row's other seeds (bench/quality.py --seed-jobs 3 --threads 1), longer than the
# preset alone (bench/speed.py --only presets; docs/benchmarks.md, "The default and the showcase").
SHOWCASE_MAX_WALL_S = 2400


def showcase(rows: list[dict]) -> Optional[dict]:
    """The row the ``cpu-showcase`` preset runs: of the rows measured on a CPU that fit its time, the one whose
    smallest gain over the three comparisons beyond the seeds' spread (:func:`clear_gain`) is largest (None
    when no row has all three). A GPU row's wall time says nothing about 2 cores."""
    fit = [(g, r) for r in rows if not gpu_of(r) and (number(r["wall_s"]) or 0) <= SHOWCASE_MAX_WALL_S
           and (g := clear_gain(r, rows)) is not None]
    return max(fit, key=lambda gr: gr[0], default=(None, None))[1]


def pm(mean: Optional[float], std: Optional[float]) -> str:
    return "–" if mean is None else f"{mean:.1f} ± {std:.1f}"


def delta(a: tuple, b: tuple) -> str:
    """Difference of means in points, with ✓ when it is larger than both standard deviations."""
    if a[0] is None or b[0] is None:
        return "–"
    d = a[0] - b[0]
    return f"{d:+.1f}{' ✓' if abs(d) > max(a[1], b[1]) else ''}"


def comparison_cells(row: dict, c: dict) -> list[str]:
    """PDD, P = 1, Δ, P = 1 same epochs, Δ, own random, Δ: a row's figures as every table shows them (the
    docs', the Results tab's, ``pdd results``'), from its ``comparisons``."""
    p1 = int(row["stages"]) == 1
    return [pm(*c["pdd"]), pm(*c["base"]), "–" if p1 else delta(c["pdd"], c["base"]), pm(*c["epochs"]),
            "–" if p1 else delta(c["pdd"], c["epochs"]), pm(*c["random"]), delta(c["pdd"], c["random"])]


def latest(rows: list[dict]) -> list[dict]:
    """One row per setting, the newest measurement of it, in the order settings were first measured."""
    out: dict[tuple, dict] = {}
    for r in rows:
        out[tuple(r[k] for k in SETTING)] = r
    return list(out.values())


def gpu_of(row: dict) -> str:
    """The GPU a row ran on, or "" for a CPU row: the machine line's part after the torch version
    (``bench.common.machine_line``: "16 CPUs ..., torch 2.11.0+cu130, NVIDIA H200"; a row whose seeds ran on
    several machines of one kind joins their lines with " + ")."""
    for line in row.get("machine", "").split(" + "):
        parts = line.split(", ")
        if len(parts) > 2 and parts[1].startswith("torch "):
            return parts[2]
    return ""


def setup(row: dict) -> str:
    """What else the row ran with, in short (the docs' tables and the studio's Results tab): the GPU if not a
    CPU, the real pool, the width, the arithmetic, an augmentation other than the field's, the other settings
    given to the bench."""
    parts = [gpu_of(row), f"pool {int(row['max_train']):,}" if row["max_train"] else "", f"w{row['width']}"]
    if (row["precision"], row["eval_precision"]) != ("float32", "float32"):
        parts.append(f"bf16 {'matching' if row['precision'] == 'bfloat16' else ''}"
                     f"{'+' if row['precision'] == row['eval_precision'] == 'bfloat16' else ''}"
                     f"{'evaluation' if row['eval_precision'] == 'bfloat16' else ''}")
    parts.append(describe(row["augmentation"]))
    parts += [f"{k} {v}" for k, v in sorted(json.loads(row["extra"] or "{}").items()) if k not in SETTING]
    return ", ".join(p for p in parts if p)


def settings_of(row: dict) -> dict:
    """The engine settings a row ran with (by name): what the studio's Results tab puts on the Distil tab."""
    out = {"dataset": row["dataset"], "method": row["method"], "stages": int(row["stages"]), "ipc": int(row["ipc"]),
           "iterations": int(row["iterations"]), "eval_epochs": int(row["eval_epochs"]),
           "eval_models": int(row["eval_models"]), "width": int(row["width"]), "precision": row["precision"],
           "eval_precision": row["eval_precision"], "dsa_strategy": row["augmentation"]}
    if row["schedule"]:
        out["stage_ipc"] = row["schedule"]
    if row["max_train"]:
        out["max_train"] = int(row["max_train"])
    return {**json.loads(row["extra"] or "{}"), **out}


def reading_order(row: dict) -> tuple:
    """Rows that compare with each other side by side: by dataset, IPC, method, then P and protocol."""
    return (row["dataset"], int(row["ipc"]), row["method"], int(row["stages"]), row["protocol"], row["schedule"],
            setup(row))


def views(rows: list[dict]) -> list[dict]:
    """Each measured setting once (its newest row), in :func:`reading_order`, with PDD and its three comparisons
    as (mean, std) in %, its smallest margin over them (``gain``) and that margin beyond the seeds' spread
    (``clear_gain``), its engine settings and its setup in short: what the studio's Results tab and
    ``pdd results`` show."""
    return [{**r, **c, "cells": comparison_cells(r, c), "gain": gain(r, rows), "clear_gain": clear_gain(r, rows),
             "settings": settings_of(r), "setup": setup(r)}
            for r in sorted(latest(rows), key=reading_order) for c in (comparisons(r, rows),)]
