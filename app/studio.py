"""The studio's callbacks: page controls -> settings (by name) -> the service; the service's answers and
run events -> what the page shows (:mod:`app.render`).

Every callback that touches a run, a run's files or an upload names the visitor (:mod:`app.identity`)
and lets the service decide; nothing here holds a run, a path the visitor may not have, or an engine
object. Errors are the service's one-line messages, shown where the control is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import anyio
import gradio as gr

from pdd_engine import events as E
from pdd_engine.errors import PDDError, one_line
from pdd_engine.service import RunState, RunView, Service

from . import render
from .identity import owner_of, token_for

UPLOAD = "upload your own (.zip)"
ALL = "all"
EXPORTED = "same as exported"  # the Evaluate tab's choice for the bundle's own architecture
NO_RUN = ("none: evaluate the uploaded bundle", "")
MAIN = ["dataset", "upload", "method", "stages", "ipc", "preset"]  # the controls above Advanced, in order
FOLLOW_WAIT_S = 2.0  # a stream re-renders at least this often (the per-stage clock), else on each event
POLL_S = 0.2  # how often a stream looks for new events (a dict lookup and a list copy)
FRAME_MIN_S = 1.0  # a stream sends at most one frame this often: each costs the browser a re-render
RUN_ENDS = (E.Exported, E.Done, E.Failed, E.Stopped)  # the events that close a run, after its last stage's
LOSS_EVERY_S = 1.0  # the loss plot streams at most this often (it changes with every iteration)
PREVIEW_WAIT_S = 30.0  # a first read of a large dataset (MNIST: ~1 s; a big zip longer), asked again
PREVIEW_MAX_S = 600.0  # until the panel gives up (a read stuck longer is the helper's to end: Helper.stuck_s)
SHOWCASE = "cpu-showcase"  # the preset suggested after the default run (docs/benchmarks.md)
DEFINING = ("dataset", "method", "stages", "ipc", "stage_ipc", "iterations", "eval_epochs")  # what makes a run "the default"
OUTPUTS = 9  # what a run's frame fills: status, progress, grid, loss, accuracy, bundle, stage files, stop, resume
RUNS_EMPTY = ("**No finished runs yet.** Every run you finish on the *Distil* tab is listed here with its accuracy "
              "beside the base method alone and a random subset; select runs to open, compare, download or delete them.")


def error_html(e: Any) -> str:
    """A message on the page as text, in a Markdown or an HTML output: it can quote what a visitor typed or a
    bundle holds, which must never become markup (render.plain)."""
    return f'<span class="pdd-error">⚠ {render.plain(e)}</span>'


def whole_number(value: Any, label: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PDDError(f"{label} must be a whole number (got {value!r})", f"enter a whole number for {label}") from None
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise PDDError(f"{label} must be a whole number (got {value})", f"enter a whole number for {label}")
    return int(f)


def parse(spec: dict, value: Any) -> Any:
    """A control's value as its setting takes it (the service checks bounds). ``None``: automatic (an
    emptied box; 0 is what an emptied number box sends); a number box's text is a number."""
    kind, optional = spec["kind"], spec["optional"]
    if isinstance(value, str) and kind in ("int", "float"):
        value = value.strip()
    if optional and value in (None, "", 0, "0"):
        return None
    if kind == "text" and not optional and not str(value or "").strip():
        raise PDDError(f"{spec['label']} is empty", f"enter a value for {spec['label']} (default: {spec['default']})")
    if kind == "int":
        return whole_number(value, spec["label"])
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PDDError(f"{spec['label']} must be a number (got {value!r})",
                           f"enter a number for {spec['label']}, or leave it empty") from None
    return value


def shown_for(spec: dict, method: str) -> bool:
    """A control is shown unless it is another method's hyper-parameter (no MTT fields for DM)."""
    return not spec["owners"] or method in spec["owners"]


def frame(run: Optional[RunView], extra: str = "", shown: Optional[dict] = None) -> tuple:
    """The page's outputs for a run. With ``shown`` (what this stream already sent, updated here), an
    output whose content has not changed is skipped, and the loss plot is redrawn at most every
    LOSS_EVERY_S: the server renders less, and the browser redraws less, on the cores the engine runs on.
    A visitor who does not own the run (a shared link) sees its progress and images, never its files."""
    view = render.RunView.of(run.events if run else [])
    state = run.state.value if run else "failed"
    bundle, stages = None, None
    status = render.status_markdown(view, state, run.position if run else 0, run.timing if run else None)
    status += f" {extra}" if extra else ""
    if view.done and view.exported is not None:  # written by the engine's process before Done
        bundle, stages = view.exported.path, view.exported.stage_paths or None
        if view.exported.error:
            status += f"<br>⚠ export failed: {render.plain(view.exported.error)}"
    owned = bool(run and run.owned)
    running = state in ("queued", "running")
    now = time.time()
    loss_due = shown is None or now - shown.get("loss_at", 0.0) >= LOSS_EVERY_S or not running
    parts = [  # (name, what decides its content, how to draw it)
        ("progress", render.progress_html(view), None),
        ("grid", (id(view.images), view.current), lambda: render.grid_html(view.images, view.current)),
        ("loss", sum(map(len, view.losses.values())) if loss_due else shown.get("loss"), lambda: render.loss_figure(view)),
        ("accuracy", (len(view.evals), view.done is not None), lambda: render.accuracy_figure(view)),
        ("bundle", bundle, None), ("stages", tuple(stages or ()), lambda: stages),
        ("stop", running and owned, lambda: gr.update(interactive=running and owned)),
        ("resume", (running, state, owned), lambda: gr.update(interactive=owned and not running and state != "done")),
    ]
    out = [status]
    for name, key, draw in parts:
        if shown is not None and name in shown and shown[name] == key:
            out.append(gr.skip())
            continue
        if shown is not None:
            shown[name] = key
            if name == "loss":
                shown["loss_at"] = now
        out.append(key if draw is None else draw())
    return tuple(out)


def one_stage_on(run: RunView, shown: int, first: bool = False) -> tuple[RunView, int, bool]:
    """``run`` as far as the first stage that began after stage ``shown``: cut just before the next stage
    began or, when that stage was the last, before the run's end. A stream sends at most one frame per
    FRAME_MIN_S, and a stage shorter than that would otherwise never be on the page (a stream catching up
    sends these one POLL_S apart). A stream's first frame of a finished run (a link opened later) shows it
    whole. Returns (the view, the stage it reaches, whether it was cut)."""
    later = [(k, ev.stage) for k, ev in enumerate(run.events) if isinstance(ev, E.StageStarted) and ev.stage > shown]
    if not later or (first and run.finished):
        return run, later[-1][1] if later else shown, False
    if len(later) >= 2:
        cut = later[1][0]
    elif run.finished:
        cut = next(k for k in range(later[0][0], len(run.events) + 1)
                   if k == len(run.events) or isinstance(run.events[k], RUN_ENDS))
    else:
        return run, later[0][1], False
    return replace(run, events=run.events[:cut], state=RunState.RUNNING, timing=None), later[0][1], True


class Studio:
    def __init__(self, service: Service):
        self.service = service
        self.schema = service.schema()
        self.settings = {s["name"]: s for s in self.schema["settings"]}
        # Advanced: the shared fields shown there, then every method's own hyper-parameters
        self.fields = [s for s in self.schema["settings"] if s["shown"] == "advanced"]
        self.presets = self.schema["presets"]
        self.kept: dict[tuple[str, str], str] = {}  # (visitor, the web framework's temporary upload) -> dataset

    # -- controls -> settings ---------------------------------------------------------------------
    def settings_of(self, owner: str, dataset: str, upload: Any, method: str, stages: Any, ipc: Any, preset: str,
                    *advanced: Any) -> dict:
        """The settings (by name) the page's controls say; raises PDDError naming the field."""
        values = dict(self.presets.get(preset, {}))
        values.update(dataset=self.dataset_of(owner, dataset, upload), method=method,
                      stages=whole_number(stages, "Stages P"), ipc=whole_number(ipc, "Total IPC"))
        for spec, value in zip(self.fields, advanced):
            if not shown_for(spec, method) or (not spec["optional"] and spec["kind"] != "text" and value in (None, "")):
                continue  # another method's setting (hidden), or an emptied number box: the preset's value
            values[spec["name"]] = parse(spec, value)
        return {k: v for k, v in values.items() if not self.settings.get(k, {"owners": []})["owners"]
                or method in self.settings[k]["owners"]}

    def named(self, message: Any, owner: str, upload: Any) -> str:
        """``message`` with the visitor's upload called by the file name they uploaded, not the name the
        server keeps it under (its content's hash, which they never saw)."""
        path = getattr(upload, "name", upload)
        ref = self.kept.get((owner, str(path))) if path else None
        return str(message) if ref is None else str(message).replace(Path(ref.partition(":")[2]).name, Path(path).name)

    def dataset_of(self, owner: str, dataset: str, upload: Any) -> str:
        """The dataset value: a built-in name, or the visitor's upload kept by the service."""
        if dataset != UPLOAD:
            return dataset
        path = getattr(upload, "name", upload)
        if not path:
            raise PDDError("no dataset file was uploaded", "upload a .zip with one folder of images per class")
        key = (owner, str(path))
        if key not in self.kept or Path(path).is_file():  # keep_upload moves the file: there again, uploaded again
            self.kept[key] = self.service.keep_upload(str(path), owner)  # (the web framework reuses a content's path)
        return self.kept[key]

    def check(self, profile: Optional[gr.OAuthProfile], token: str, *controls: Any) -> tuple:
        """Validation line, estimate, whether Run is enabled, and what each automatic Advanced field becomes
        (its placeholder)."""
        owner = owner_of(token, profile) or "anonymous"
        skip = tuple(gr.update() for _ in self.fields)
        try:
            settings = self.settings_of(owner, *controls)
        except PDDError as e:
            return error_html(self.named(e, owner, controls[1])), "", gr.update(interactive=False), *skip
        c = self.service.check(settings, owner)
        if c.pending:  # checked again when the preview is read (layout): a wait, not a mistake
            return "⏳ Reading your upload… Run is enabled once its images show in the data panel.", "", \
                gr.update(interactive=False), *skip
        if not c.ok:
            return error_html(self.named(c.error, owner, controls[1])), "", gr.update(interactive=False), *skip
        per = str(c.ipcs[0]) if len(set(c.ipcs)) == 1 else ", ".join(map(str, c.ipcs))
        note = "".join(f'<br><span class="pdd-warning">⚠ {w}</span>' for w in c.warnings)
        if next((d for d in self.schema["datasets"] if d["name"] == c.config["dataset"]), {}).get("availability") \
                == "needs download":
            note += f"<br>ℹ {c.config['dataset']} is not on this machine: it is downloaded on first use (needs internet)."
        valid = f"✓ valid: {c.config['stages']} stage(s) × {per} image(s) per class{note}"
        est = ("Estimate on this machine: timing this network… (change any value to see it)." if c.estimate is None
               else f"Estimate on this machine: **{c.estimate}** (rough, ±2×).")
        auto = c.automatic or {}
        holders = [gr.update(placeholder=f"automatic: {auto[f['name']]}" if f["name"] in auto else "automatic")
                   if self.automatic(f) else gr.update() for f in self.fields]
        return valid, est, gr.update(interactive=True), *holders

    @staticmethod
    def automatic(spec: dict) -> bool:
        """Empty means "chosen for you": a text box whose placeholder says what it becomes."""
        return spec["optional"] and spec["kind"] in ("int", "float", "text")

    def control_values(self, preset: str = "cpu-quick") -> list:
        """Every control's value for a preset, in the order of the page's controls."""
        values = self.preset_settings(preset)
        advanced = [self.shown_value(f, values.get(f["name"])) for f in self.fields]
        return [values["dataset"], None, values["method"], values["stages"], values["ipc"], preset, *advanced]

    def preset_settings(self, preset: str) -> dict:
        """Every setting's value under a preset (the schema's defaults, then the preset's own)."""
        return {**{s["name"]: s["default"] for s in self.schema["settings"]}, **self.presets.get(preset, {})}

    def setting_list(self) -> list[dict]:
        """Every setting /start takes: name, label, hint, kind, bounds, server maximum, choices, the methods
        that own it (none: every method's), and its default."""
        return self.schema["settings"]

    def preset_values(self, preset: str) -> list:
        """What a preset sets: dataset, method, stages, IPC and the Advanced controls."""
        values = self.control_values(preset)
        return values[:1] + values[2:5] + values[6:]

    def shown_value(self, spec: dict, value: Any) -> Any:
        if self.automatic(spec):
            if value is None:
                return ""
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
                if isinstance(value, float) else str(value)
        return "" if value is None else value

    # -- data ---------------------------------------------------------------------------------------
    def preview(self, profile: Optional[gr.OAuthProfile], token: str, dataset: str, upload: Any,
                image_size: Any = None) -> tuple:
        """The chosen dataset's sample grid and facts (never downloads), read at Image size where that box
        holds a valid size: what a run would read, so the panel and the validation line agree."""
        owner = owner_of(token, profile)
        if dataset == UPLOAD and not getattr(upload, "name", upload):
            return None, "Upload a .zip with one folder of images per class (class_name/*.png) to see it here."
        try:
            size = parse(self.settings["image_size"], image_size)
        except PDDError:
            size = None  # the validation line names a bad Image size; the panel shows the upload's own size
        until = time.monotonic() + PREVIEW_MAX_S
        while True:  # a long read keeps the panel's spinner, then its images; the validation line follows (layout)
            try:
                p = self.service.preview(self.dataset_of(owner, dataset, upload), owner, timeout=PREVIEW_WAIT_S,
                                         image_size=size)
                return render.preview_image(p), render.preview_markdown(p)
            except PDDError as e:
                return None, error_html(self.named(e, owner, upload))
            except TimeoutError:
                if time.monotonic() > until:
                    return None, "Reading the dataset takes long… (pick it again in a moment to see it)"

    # -- runs ------------------------------------------------------------------------------------------
    def start_page(self, profile: Optional[gr.OAuthProfile], token: str, *controls: Any) -> tuple[str, str, str]:
        """Run the page's settings: (run id, this browser's token, message)."""
        token = token_for(token)
        owner = owner_of(token, profile)
        try:
            return self.service.submit(self.settings_of(owner, *controls), owner), token, ""
        except PDDError as e:
            return "", token, error_html(e)

    def start(self, owner: str, settings: dict) -> tuple[str, str, str]:
        """Start a run from settings by name (one JSON object; anything left out takes its default, so a new
        setting never shifts a client's arguments). ``owner``: the token an earlier call returned, or empty.
        Returns (run id, the owner token to pass to /follow, /stop, /resume and /runs, message)."""
        token = token_for(owner)
        who = owner_of(token)
        try:
            if not isinstance(settings, dict):
                raise PDDError("settings must be one JSON object of names and values", 'send e.g. {"stages": 2, "ipc": 10}')
            return self.service.submit(settings, who), token, ""
        except PDDError as e:
            return "", token, f"⚠ {one_line(e)}"  # one printable line: it can quote an upload's class names

    def resume(self, profile: Optional[gr.OAuthProfile], run_id: str, token: str) -> tuple[str, str, str]:
        try:
            return self.service.resume(run_id, owner_of(token, profile)), token, ""
        except PDDError as e:
            return run_id if run_id else "", token, error_html(e)

    def stop(self, profile: Optional[gr.OAuthProfile], run_id: str, token: str) -> str:
        return self.service.stop(run_id, owner_of(token, profile)) if run_id else "No run to stop."

    async def follow(self, profile: Optional[gr.OAuthProfile], run_id: str, token: str):
        """Stream the page's view of a run until it finishes (reattaches from the first event). An async
        generator: a stream waits on the event loop, not in a worker thread, so any number of followers (a
        shared link, a stranger opening many) never starves the page's other requests of threads; a frame is
        drawn in a thread only when something changed."""
        owner = owner_of(token, profile)
        view = self.service.watch(run_id, owner)
        if view is None:
            yield frame(None, extra="No run with that id on this server (it may have restarted). Fix: press Run "
                                         "with the same settings: finished stages come from the cache.")
            return
        shown: dict = {}
        stage, first = 0, True
        while True:
            view, stage, behind = one_stage_on(self.service.watch(run_id, owner), stage, first)
            first = False
            yield await anyio.to_thread.run_sync(frame, view, self.next_step(view), shown)
            if view.finished:
                return
            t, seen = time.monotonic(), self.service.version(run_id)
            await asyncio.sleep(POLL_S if behind else FRAME_MIN_S)  # catching up: a stage per frame, at most P frames
            while not behind and time.monotonic() - t < FOLLOW_WAIT_S and self.service.version(run_id) == seen:
                await asyncio.sleep(POLL_S)

    def next_step(self, run: RunView) -> str:
        """After the default run has finished: where to look next (the showcase preset, and the Results tab
        that holds its measured rows), since the default's own numbers rarely show what PDD adds."""
        if run.state is not RunState.DONE or SHOWCASE not in self.presets:  # before scanning a long stream
            return ""
        started = next((e for e in run.events if isinstance(e, E.RunStarted)), None)
        default = self.preset_settings("cpu-quick")
        if started is None or any(started.config.get(k) != default.get(k) for k in DEFINING):
            return ""
        show = self.presets[SHOWCASE]
        data = show.get("dataset", default.get("dataset"))
        where = "the same data" if data == default.get("dataset") else f"{data} (a longer run; the Results tab has its time)"
        return (f"<br>Next: the **{SHOWCASE}** preset (Preset, above) runs PDD+{show.get('method', 'dm').upper()} "
                f"on {where}, the setting where the benchmark's PDD is furthest ahead of all three comparisons; the "
                "**Results** tab shows those rows, with their spread over seeds.")

    async def follow_if_any(self, profile: Optional[gr.OAuthProfile], run_id: str, token: str):
        """On page load: reattach to the run named in the URL, if any."""
        if not run_id:
            yield tuple(gr.skip() for _ in range(OUTPUTS))
            return
        async for out in self.follow(profile, run_id, token):
            yield out

    # -- the Runs tab ---------------------------------------------------------------------------------
    def runs_table(self, profile: Optional[gr.OAuthProfile], token: str) -> tuple:
        """The Runs table, the run pickers (Runs and Evaluate tabs), and the empty state's text."""
        rows, choices = [], []
        pm = lambda m, s: "–" if m is None else f"{100 * m:.1f}"  # noqa: E731
        for r in self.service.runs(owner_of(token, profile)):
            c, last = r.config, r.final
            rows.append([r.id, r.label.split()[1], c["method"], c["stages"], c["ipc"], c["iterations"],
                         f"{100 * last.mean:.1f} ± {100 * last.std:.1f}", pm(last.base_mean, 0),
                         pm(last.base_epochs_mean, 0), f"{100 * last.random_mean:.1f}",
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished))])
            choices.append((r.label, r.key))
        empty = "" if rows else RUNS_EMPTY
        return rows, gr.update(choices=choices, value=[]), gr.update(choices=[NO_RUN] + choices, value=""), empty

    def compare(self, profile: Optional[gr.OAuthProfile], keys: list[str], token: str) -> tuple:
        chosen, differences, warnings = self.service.compare(keys, owner_of(token, profile))
        if not chosen:
            return None, "⚠ select one or more runs first."
        return render.compare_figure(chosen), differences + render.warnings_markdown(warnings)

    def confirm_delete(self, profile: Optional[gr.OAuthProfile], keys: list[str], token: str) -> tuple:
        chosen = self.service.records(keys, owner_of(token, profile))
        if not chosen:
            return "⚠ select one or more runs first.", gr.update(visible=False)
        names = ", ".join(r.id for r in chosen)
        return (f"Delete {len(chosen)} run record(s) ({names})? Their cached stages stay for runs that share them.",
                gr.update(visible=True))

    def delete(self, profile: Optional[gr.OAuthProfile], keys: list[str], token: str) -> str:
        try:
            n = self.service.delete(keys, owner_of(token, profile))
        except PDDError as e:
            return f"⚠ {e}"
        return f"Deleted {n} run record(s); their stages stay cached for runs that share them."

    def download(self, profile: Optional[gr.OAuthProfile], keys: list[str], token: str) -> tuple:
        owner = owner_of(token, profile)
        files, problems = [], []
        for r in self.service.records(keys, owner):
            done = self.service.export(r.key, owner)
            if done.path:
                files.append(done.path)
            else:
                problems.append(f"⚠ {r.id}: {render.plain(done.error)}")
        return files or None, "<br>".join(problems)

    def open(self, profile: Optional[gr.OAuthProfile], keys: list[str], token: str) -> tuple:
        """Open a finished run: a run that replays it from the cache (no training happens)."""
        try:
            run_id = self.service.open((keys or [""])[0], owner_of(token, profile))
        except PDDError as e:
            return "", gr.update(), f"⚠ {e}"
        return run_id, gr.Tabs(selected="distil"), ""

    # -- the Results tab: the benchmark, and where PDD gains ------------------------------------------------
    def results_table(self, dataset: str = ALL, method: str = ALL, ipc: str = ALL) -> tuple:
        """The benchmark's rows matching the filters (PDD beside its three comparisons, differences in points),
        and the row picker, on the row where PDD is furthest ahead of all three beyond the seeds' spread (the
        first row where none has all three): what a visitor came to see, without looking for it."""
        rows, choices, best = [], [], (float("-inf"), None)
        for i, r in enumerate(self.service.results()):
            if (dataset, method, ipc) != (ALL, ALL, ALL) and not all(
                    want in (ALL, r[k]) for k, want in (("dataset", dataset), ("method", method), ("ipc", ipc))):
                continue
            p = int(r["stages"])
            name = f"{'PDD+' if p > 1 else ''}{r['method'].upper()}"
            rows.append([r["dataset"], r["ipc"], name, p, r["protocol"] if p > 1 else "both", r["setup"],
                         *r["cells"], len(r["seeds"].split()), r["wall_s"]])
            choices.append((f"{r['dataset']} IPC {r['ipc']} {name} P={p} {r['protocol']} ({r['iterations']} it, "
                            f"{r['eval_epochs']} ep; {r['setup']})", str(i)))
            if r["clear_gain"] is not None and r["clear_gain"] > best[0]:
                best = (r["clear_gain"], str(i))
        empty = "" if rows else ("**No benchmark rows match.** `python -m bench.quality` measures them "
                                 "(docs/benchmarks.md).")
        return rows, gr.update(choices=choices, value=best[1] or (choices[0][1] if choices else None)), empty

    def result_filters(self) -> tuple:
        rows = self.service.results()
        values = lambda k: [ALL] + sorted({r[k] for r in rows}, key=lambda v: (len(v), v))  # noqa: E731
        return tuple(gr.update(choices=values(k), value=ALL) for k in ("dataset", "method", "ipc"))

    def result_curve(self, pick: Optional[str]) -> Any:
        rows = self.service.results()
        return render.result_figure(rows[int(pick)]) if pick not in (None, "") and int(pick) < len(rows) else None

    def use_result(self, pick: Optional[str]) -> list:
        """A benchmark row's settings on the Distil tab (its controls, then the tab itself)."""
        rows = self.service.results()
        if pick in (None, "") or int(pick) >= len(rows):
            return [gr.update() for _ in range(4 + len(self.fields))] + [gr.Tabs()]
        values = {**{s["name"]: s["default"] for s in self.schema["settings"]}, **rows[int(pick)]["settings"]}
        advanced = [self.shown_value(f, values.get(f["name"])) for f in self.fields]
        return [values["dataset"], values["method"], values["stages"], values["ipc"], *advanced, gr.Tabs(selected="distil")]

    # -- the Evaluate tab ------------------------------------------------------------------------------
    def bundle(self, upload: Any, run_key: str, owner: str) -> tuple[str, Optional[str]]:
        return self.service.bundle_path(getattr(upload, "name", upload) or None, run_key, owner)

    def inspect_bundle(self, profile: Optional[gr.OAuthProfile], upload: Any, run_key: str, token: str) -> tuple:
        """What a bundle holds, in one line (or why it is not one), and its epochs as the placeholder."""
        if not getattr(upload, "name", upload) and not run_key:
            return "", gr.update(placeholder="as exported")
        try:
            m = self.service.manifest(self.bundle(upload, run_key, owner_of(token, profile))[0])
        except PDDError as e:
            return error_html(e), gr.update(placeholder="as exported")
        e = m["evaluation"]
        line = (f"✓ {render.plain(m['method'].upper())} on {render.plain(m['dataset']['name'])}: {m['stages']} stage(s), "
                f"IPC {m['ipc']}, evaluated on {self.service.bundle_architecture(m)} ({e['models']} networks × {e['epochs']} epochs per stage).")
        line += render.warnings_markdown(self.service.bundle_warnings(m))  # what its run warned of travels with it
        return line, gr.update(placeholder=f"as exported: {e['epochs']}")

    def evaluate(self, profile: Optional[gr.OAuthProfile], upload: Any, run_key: str, archs: list[str], models: Any,
                 epochs: Any, data: Any, token: str):
        """Re-train fresh networks of each chosen architecture on the bundle's stages (curriculum), streaming
        the table and the curves as each architecture finishes."""
        owner = owner_of(token_for(token), profile)  # an uploaded bundle needs no run of the visitor's
        try:
            path, own_data = self.bundle(upload, run_key, owner)
            m = self.service.manifest(path)
            if not archs:
                raise PDDError("no architecture is chosen", "tick one or more under Architectures")
            n = whole_number(models, "Networks per architecture") if models not in (None, "") else None
            ep = whole_number(epochs, "Epochs per stage") if str(epochs or "").strip() not in ("", "0") else None
            if (n is not None and n < 1) or (ep is not None and ep < 1):
                raise PDDError("networks and epochs must be 1 or more", "enter a whole number >= 1, or leave Epochs empty")
            data_path = getattr(data, "name", data) or own_data
            if m["config"]["dataset"].startswith("folder:") and not data_path:
                raise PDDError("this bundle was made on your own data, and a bundle never says where it is",
                               "upload the same .zip under 'Its dataset'")
        except PDDError as e:
            yield error_html(e), None, None
            return
        results: list = []
        names = [None if a == EXPORTED else a for a in archs]
        yield f"Evaluating {render.plain(archs[0])} (1/{len(archs)})…", *self.evaluation_view(m, results)
        try:
            for i, (arch, accs) in enumerate(self.service.evaluate_bundle(path, names, n, ep, data_path, owner)):
                results.append((arch, accs))
                more = f" Evaluating {render.plain(archs[i + 1])} ({i + 2}/{len(archs)})…" if i + 1 < len(archs) else ""
                yield f"✓ {arch or EXPORTED} done.{more}", *self.evaluation_view(m, results)
        except PDDError as e:
            yield error_html(e), *self.evaluation_view(m, results)
            return
        yield f"✓ Evaluated on {len(results)} architecture(s).", *self.evaluation_view(m, results)

    def evaluation_view(self, manifest: dict, results: list) -> tuple:
        headers, rows = self.service.evaluation_table(manifest, results)
        arch = self.service.bundle_architecture(manifest)
        return {"headers": headers, "data": rows}, render.evaluation_figure(manifest, results, arch)

    def prime(self) -> None:
        """Start the helper's answers for the default page (the network's timing, the default preview) so
        the first visitor finds them ready; returns at once."""
        def work() -> None:
            self.check(None, "0" * 16, *self.control_values())
            self.preview(None, "0" * 16, self.control_values()[0], None)
        threading.Thread(target=work, daemon=True).start()

