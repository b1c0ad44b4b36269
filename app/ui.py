"""The Gradio studio. It translates controls into a :class:`DistillConfig`, hands runs to the
:class:`~app.jobs.JobManager`, and renders the job's events; it never runs the engine itself.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from pdd_engine import PRESETS, PDDError, runs
from pdd_engine.methods import REGISTRY, all_params, owners
from pdd_engine.methods.spec import base_type
from pdd_engine.cache import Store
from pdd_engine import datasets
from pdd_engine.config import DistillConfig
from pdd_engine.estimate import config_warnings, estimate

from . import render
from .jobs import JobManager

UPLOAD = "upload your own (.zip)"
# Shared fields shown under Advanced, in order, with their labels; after them come the registered
# methods' own hyper-parameters (each shown only for its methods). The rest comes from the preset.
SHARED = {"stage_ipc": "Images per class of each stage (empty: Total IPC split evenly; e.g. 6,4)",
          "iterations": "Iterations per stage", "lr_img": "Image learning rate (empty or 0: method default)",
          "width": "Network width", "depth": "Network depth (empty or 0: by image size)",
          "image_size": "Image size in pixels (empty or 0: the dataset's own; set it for mixed-size uploads)",
          "eval_epochs": "Evaluation epochs per stage", "eval_models": "Evaluation networks", "seed": "Seed",
          "transition_epochs": "PDD transition epochs", "filter_easy": "Drop easy real examples between stages",
          "zca": "ZCA whitening", "device": "Device", "transition": "PDD transition",
          "compare_base": "Compare with the base method alone (P=1)"}
CHOICE_LABELS = {"transition": [("chain: one network through U_1, U_2, ... (paper)", "chain"),
                                ("fresh: a new network on U_{i-1}", "fresh")],
                 "compare_base": [("at the final stage", "final"), ("at every stage", "every"), ("off", "off")]}
POLL_S = 0.25
ESTIMATE_WAIT_S = 1.0  # a control change waits at most this long for a network's timing


@dataclass(frozen=True)
class Field:
    """One Advanced control: a config field or a method hyper-parameter."""

    name: str
    label: str
    type: Any  # without Optional: int, float, bool or a Literal
    optional: bool  # empty (or 0, which an emptied number box sends) means "automatic"
    default: Any

    def parse(self, value: Any) -> Any:
        if self.optional and value in (None, "", 0):
            return None
        if self.type is int:
            return int_or(value, self.label)
        if self.type is float:
            return float(value)
        return value


def advanced_fields() -> list[Field]:
    """The shared fields, then every registered method's hyper-parameters (a shared name once)."""
    hints, defaults = typing.get_type_hints(DistillConfig), DistillConfig()
    return ([Field(name, label, *base_type(hints[name]), getattr(defaults, name)) for name, label in SHARED.items()]
            + [Field(name, meta["label"], *base_type(t), default) for name, t, default, meta in all_params()])


class Studio:
    def __init__(self, manager: JobManager, store: Store, export_dir: Path, data_root: Optional[str] = None,
                 upload_dir: Optional[Path] = None, public: bool = False):
        """``upload_dir``: where uploaded zips are kept, outside every folder the web server serves.
        ``public``: every visitor sees, exports and deletes every run (a single-user or teaching
        deployment); otherwise runs belong to the browser that made them."""
        self.manager, self.store, self.export_dir, self.data_root = manager, store, export_dir, data_root
        self.upload_dir = upload_dir or export_dir.parent / "uploads"
        self.public = public
        self.uploads: dict[str, str] = {}  # the web framework's temporary upload path -> our private copy
        self.fields = advanced_fields()  # read once the registry is complete
        export_dir.mkdir(parents=True, exist_ok=True)

    def keep_upload(self, cfg: DistillConfig) -> DistillConfig:
        """An uploaded zip moves out of the web framework's temporary folder (which its file route
        serves) into ``upload_dir``, named by content, so no one can fetch it back and identical
        uploads share cached work."""
        if not cfg.dataset.startswith("folder:"):
            return cfg
        temp = cfg.dataset.removeprefix("folder:")
        if temp not in self.uploads:
            with open(temp, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
            self.upload_dir.mkdir(parents=True, exist_ok=True)
            kept = self.upload_dir / f"{digest.hexdigest()[:20]}.zip"
            if not kept.exists():
                shutil.copyfile(temp, kept)
            Path(temp).unlink(missing_ok=True)
            self.uploads[temp] = str(kept)
        return cfg.replace(dataset=f"folder:{self.uploads[temp]}")

    # -- controls -> config -------------------------------------------------------------
    def dataset_choices(self) -> list[tuple[str, str]]:
        return dataset_choices(self.data_root)

    def config(self, dataset: str, upload: Any, method: str, stages: float, ipc: float, preset: str,
               *advanced: Any) -> DistillConfig:
        """Build and validate the config; raises PDDError with a one-line message."""
        if dataset == UPLOAD:
            path = getattr(upload, "name", upload)
            if not path:
                raise PDDError("no dataset file was uploaded", "upload a .zip with one folder of images per class")
            if not str(path).lower().endswith(".zip"):
                raise PDDError(f"{Path(str(path)).name} is not a .zip file", "upload a .zip with one folder of images per class")
            dataset = f"folder:{path}"
        values = dict(PRESETS.get(preset, {}))
        values.update(dataset=dataset, method=method, stages=int_or(stages, "stages"), ipc=int_or(ipc, "IPC"))
        for f, value in zip(self.fields, advanced):
            if not shown_for(f.name, method) or (not f.optional and value in (None, "")):
                continue  # another method's setting (hidden), or an empty box: the preset's value
            values[f.name] = f.parse(value)
        return DistillConfig.make({**values, "data_root": self.data_root}, other_methods="drop")

    def check(self, *controls) -> tuple[str, str, dict]:
        """Validation message, time/memory estimate, and whether Run is enabled."""
        try:
            cfg = self.config(*controls)
        except PDDError as e:
            return f'<span class="pdd-error">⚠ {e}</span>', "", gr.update(interactive=False)
        note = ""
        if datasets.find(cfg.dataset).availability(self.data_root) != "offline":
            note = f"<br>ℹ {cfg.dataset} is not on this machine: it is downloaded on first use (needs internet)."
        for w in config_warnings(cfg):
            note += f'<br><span class="pdd-warning">⚠ {w.removeprefix("warning: ")}</span>'
        per = f"{cfg.ipcs[0]}" if len(set(cfg.ipcs)) == 1 else ", ".join(map(str, cfg.ipcs))
        valid = f"✓ valid: {cfg.stages} stage(s) × {per} image(s) per class{note}"
        cost = lambda *shape: self.manager.pass_cost(*shape, timeout=ESTIMATE_WAIT_S)  # noqa: E731
        memory = lambda c, *shape: self.manager.extra_memory(c, *shape, timeout=ESTIMATE_WAIT_S)  # noqa: E731
        try:
            est = f"Estimate on this machine: **{estimate(cfg, device=self.device(cfg), cost=cost, memory=memory)}** (rough, ±2×)."
        except TimeoutError:  # the helper process is still timing this network: answer now, not later
            est = "Estimate on this machine: timing this network… (change any value to see it)."
        return valid, est, gr.update(interactive=True)

    def prime(self) -> None:
        """Start the helper process's answers for the default controls (device, the network's timing,
        memory) so the first page load finds them ready; returns at once, the work goes on there."""
        threading.Thread(target=self.check, args=self.control_values(DistillConfig()), daemon=True).start()

    def device(self, cfg: DistillConfig) -> str:
        return self.manager.device(cfg.device, timeout=ESTIMATE_WAIT_S)

    def preset_values(self, preset: str) -> list:
        cfg = DistillConfig.make(PRESETS.get(preset, {}))
        return [cfg.dataset, cfg.method, cfg.stages, cfg.ipc] + self.advanced_values(cfg)

    def advanced_values(self, cfg: DistillConfig) -> list:
        return advanced_values(cfg, self.fields)

    def control_values(self, cfg: DistillConfig, preset: str = "cpu-quick") -> list:
        return control_values(cfg, preset, self.fields)

    # -- runs ---------------------------------------------------------------------------
    def start(self, owner: str, *controls) -> tuple[str, str, str]:
        owner = owner or secrets.token_hex(8)
        try:
            cfg = self.config(*controls)
            if controls[0] == UPLOAD:
                cfg = self.keep_upload(cfg)
        except PDDError as e:
            return "", owner, f'<span class="pdd-error">⚠ {e}</span>'
        except OSError as e:
            return "", owner, f'<span class="pdd-error">⚠ the upload could not be kept ({e.strerror}). Fix: upload it again.</span>'
        job = self.manager.submit(cfg, owner)
        return job.id, owner, ""

    def resume(self, job_id: str, owner: str) -> tuple[str, str, str]:
        job = self.manager.get(job_id)
        if job is None:
            return "", owner, '<span class="pdd-error">⚠ nothing to resume. Fix: start a run first.</span>'
        if not job.finished:
            return job.id, owner, "The run is still going."
        return self.manager.submit(job.config, owner or job.owner).id, owner, ""

    def stop(self, job_id: str, owner: str) -> str:
        return self.manager.stop(job_id, owner) if job_id else "No run to stop."

    def follow(self, job_id: str):
        """Stream the page's view of a job until it finishes (reattaches from the first event)."""
        job = self.manager.get(job_id)
        if job is None:
            yield self.frame(render.RunView(), "failed", extra="No run with that id on this server (it may have "
                             "restarted). Fix: press Run with the same settings: finished stages come from the cache.")
            return
        seen = -1
        while True:
            n = len(job.events)
            if n != seen or job.state == "queued":
                seen = n
                view = render.RunView.of(list(job.events))
                finished = job.finished
                yield self.frame(view, job.state, self.manager.position(job.id), job if finished else None)
                if finished:
                    return
            time.sleep(POLL_S)

    def follow_if_any(self, job_id: str):
        """On page load: reattach to the run named in the URL, if any."""
        if not job_id:
            yield tuple(gr.skip() for _ in range(9))
            return
        yield from self.follow(job_id)

    def frame(self, view: render.RunView, state: str, position: int = 0, job=None, extra: str = "") -> tuple:
        bundle, stages = None, None
        status = render.status_markdown(view, state, position) + (f" {extra}" if extra else "")
        if view.done and view.exported is not None:  # written by the engine's worker before Done
            bundle, stages = view.exported.path, view.exported.stage_paths or None
            if view.exported.error:
                status += f"<br>⚠ export failed: {view.exported.error}"
        running = state in ("queued", "running")
        return (status, render.progress_html(view), render.grid_image(view.images, view.current), render.loss_figure(view),
                render.accuracy_figure(view), bundle, stages,
                gr.update(interactive=running), gr.update(interactive=not running and state != "done"))

    # -- runs tab -----------------------------------------------------------------------
    def runs_table(self, owner: str = "") -> tuple[list[list], dict]:
        rows, choices = [], []
        for r in runs.list_runs(self.store, None if self.public else owner):
            c, last = r.config, r.final
            rows.append([r.id, shown_dataset(c.dataset), c.method, c.stages, c.ipc, c.iterations,
                         f"{100 * last.mean:.1f} ± {100 * last.std:.1f}",
                         "–" if last.base_mean is None else f"{100 * last.base_mean:.1f}", f"{100 * last.random_mean:.1f}",
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished))])
            choices.append((r.label, r.key))
        return rows, gr.update(choices=choices, value=[])

    def selected(self, keys: Optional[list[str]], owner: str = "") -> list[runs.RunRecord]:
        """The chosen runs still in the cache that ``owner`` may see (each read on its own)."""
        mine = None if self.public else runs.owned(self.store, owner)
        return list(filter(None, (runs.read(self.store, k) for k in keys or [] if mine is None or k in mine)))

    def compare(self, keys: list[str], owner: str = ""):
        return render.compare_figure(self.selected(keys, owner))

    def download_runs(self, keys: list[str], owner: str = "") -> tuple[Optional[list[str]], str]:
        files, problems = [], []
        for r in self.selected(keys, owner):
            done = self.manager.export(r.key, owner)  # in a helper process: data loading stays out of the server
            if done.path:
                files.append(done.path)
            else:
                problems.append(f"⚠ {r.id}: {done.error}")
        return files or None, "<br>".join(problems)

    def delete_runs(self, keys: list[str], owner: str = "") -> str:
        chosen = self.selected(keys, owner)
        if {r.config for r in chosen} & set(self.manager.active_configs()):
            return "⚠ a selected run is running right now and cannot be deleted. Fix: wait until it finishes."
        if self.public:
            n = runs.delete(self.store, [r.key for r in chosen])
        else:  # your listing only: another browser that ran the same settings keeps its own
            n = sum(runs.release(self.store, r.key, owner) for r in chosen)
        return f"Deleted {n} run record(s); their stages stay cached for runs that share them."


def shown_dataset(name: str) -> str:
    """A dataset as the Runs tab shows it: a user's data by file name, never a server path."""
    return f"folder:{Path(name.removeprefix('folder:')).name}" if name.startswith("folder:") else name


def advanced_values(cfg: DistillConfig, fields: Optional[list[Field]] = None) -> list:
    """The Advanced controls' values for ``cfg`` (other methods' controls keep their defaults)."""
    flat = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in cfg.flat().items()}
    return [flat.get(f.name, f.default) for f in fields or advanced_fields()]


def control_values(cfg: DistillConfig, preset: str = "cpu-quick", fields: Optional[list[Field]] = None) -> list:
    """Every control's value for ``cfg``, in the order the page (and the /start API) takes them."""
    return [cfg.dataset, None, cfg.method, cfg.stages, cfg.ipc, preset] + advanced_values(cfg, fields)


def dataset_choices(data_root: Optional[str] = None) -> list[tuple[str, str]]:
    """Every registered dataset, marked offline or needs download, then the upload entry."""
    out = [(f"{name} ({datasets.find(name).availability(data_root)})", name) for name in datasets.named()]
    return out + [(UPLOAD, UPLOAD)]


def method_choices() -> list[tuple[str, str]]:
    """(title, name) of every registered base method, for the menu."""
    return [(cls.title, name) for name, cls in REGISTRY.items()]


def shown_for(field: str, method: str) -> bool:
    """A control is shown unless it is another method's hyper-parameter (no MTT fields for DM)."""
    return not owners(field) or method in owners(field)


def control(f: Field):
    """The Gradio control for one Advanced field."""
    if typing.get_origin(f.type) is typing.Literal:
        return gr.Dropdown(CHOICE_LABELS.get(f.name, list(typing.get_args(f.type))), value=f.default, label=f.label)
    if f.type is bool:
        return gr.Checkbox(f.default, label=f.label)
    if typing.get_origin(f.type) is tuple:  # a list of numbers, typed as text ("6,4")
        return gr.Textbox(f.default or "", label=f.label)
    return gr.Number(None if f.optional else f.default, label=f.label, precision=0 if f.type is int else None)


def int_or(value: Any, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PDDError(f"{name} must be a whole number (got {value!r})", f"enter a whole number for {name}") from None
    if f != int(f):
        raise PDDError(f"{name} must be a whole number (got {value})", f"enter a whole number for {name}")
    return int(f)


SET_URL = """(id) => { if (id) { const u = new URL(window.location); u.searchParams.set('run', id);
  window.history.replaceState(null, '', u); } return id; }"""


def build(studio: Studio) -> gr.Blocks:
    defaults = DistillConfig()
    # the web framework's temporary copies of uploads and downloads: checked hourly, deleted after a day
    with gr.Blocks(title="PDD Studio", delete_cache=(3600, 86400)) as demo:
        owner = gr.BrowserState("", storage_key="pdd_studio_owner")
        job_id = gr.Textbox(visible=False, elem_id="pdd-job-id")
        gr.Markdown("# PDD Studio\nDistil a dataset into a few synthetic images per class, **stage by stage** "
                    "(Progressive Dataset Distillation). Every finished stage is cached: stop, resume and re-open freely.")
        with gr.Tabs() as tabs:
            with gr.Tab("Distil", id="distil"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        dataset = gr.Dropdown(studio.dataset_choices(), value="digits", label="Dataset")
                        upload = gr.File(label="Your dataset: a .zip of class_name/*.png", file_types=[".zip"], visible=False)
                        method = gr.Dropdown(method_choices(), value=defaults.method, label="Base method")
                        with gr.Row():
                            stages = gr.Number(defaults.stages, label="Stages P", precision=0, minimum=1, maximum=50)
                            ipc = gr.Number(defaults.ipc, label="Total IPC", precision=0, minimum=1, maximum=1000)
                        preset = gr.Dropdown(list(PRESETS), value="cpu-quick", label="Preset")
                        validation = gr.HTML(elem_id="pdd-validation")
                        estimate_md = gr.Markdown()
                        with gr.Row():
                            run_btn = gr.Button("Run", variant="primary", elem_id="pdd-run")
                            stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="pdd-stop")
                            resume_btn = gr.Button("Resume", interactive=False, elem_id="pdd-resume")
                        with gr.Accordion("Advanced", open=False):
                            adv = [control(f) for f in studio.fields]
                            for f, c in zip(studio.fields, adv):
                                c.visible = shown_for(f.name, defaults.method)
                    with gr.Column(scale=2):
                        status = gr.Markdown("Pick a dataset and press **Run**.", elem_id="pdd-status")
                        progress = gr.HTML(render.progress_html(render.RunView()))
                        grid = gr.Image(label="Synthetic images (rows: classes; orange: this stage, grey: frozen earlier stages)",
                                        type="pil", elem_id="pdd-grid")
                        with gr.Row():
                            loss_plot = gr.Plot(label="Loss", elem_id="pdd-loss")
                            acc_plot = gr.Plot(label="Accuracy", elem_id="pdd-acc")
                        with gr.Row():
                            bundle = gr.File(label="Bundle (zip: manifest, tensors, PNGs)", elem_id="pdd-bundle")
                            stage_files = gr.File(label="Each stage's images", file_count="multiple")
            with gr.Tab("Runs", id="runs"):
                runs_df = gr.Dataframe(headers=["run", "dataset", "method", "P", "IPC", "iterations", "accuracy %",
                                                "base alone %", "random %", "finished"], interactive=False)
                with gr.Row():
                    pick = gr.Dropdown([], multiselect=True, label="Select runs", scale=3)
                    refresh = gr.Button("Refresh", scale=1)
                with gr.Row():
                    open_btn = gr.Button("Open (first selected)")
                    compare_btn = gr.Button("Compare")
                    dl_btn = gr.Button("Download")
                    del_btn = gr.Button("Delete", variant="stop")
                runs_msg = gr.Markdown()
                compare_plot = gr.Plot(label="Comparison")
                runs_files = gr.File(label="Bundles", file_count="multiple")

        controls = [dataset, upload, method, stages, ipc, preset, *adv]
        outputs = [status, progress, grid, loss_plot, acc_plot, bundle, stage_files, stop_btn, resume_btn]
        gr.on([c.change for c in controls], studio.check, controls, [validation, estimate_md, run_btn],
              trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        dataset.change(lambda d: gr.update(visible=d == UPLOAD), dataset, upload, queue=False, api_visibility="private")
        preset.change(studio.preset_values, preset, [dataset, method, stages, ipc, *adv], queue=False,
                      api_visibility="private")
        method.change(lambda m: [gr.update(visible=shown_for(f.name, m)) for f in studio.fields], method, adv, queue=False,
                      api_visibility="private")

        def launch(evt, private=True):
            return (evt.then(None, job_id, job_id, js=SET_URL, api_visibility="private")
                    .then(studio.follow, job_id, outputs, concurrency_limit=None, show_progress="hidden",
                          api_name=None if private else "follow", api_visibility="private" if private else "public"))

        launch(run_btn.click(studio.start, [owner, *controls], [job_id, owner, validation], queue=False,
                             api_name="start"), private=False)
        launch(resume_btn.click(studio.resume, [job_id, owner], [job_id, owner, validation], queue=False,
                                api_name="resume"))
        stop_btn.click(studio.stop, [job_id, owner], validation, queue=False, api_name="stop")

        def on_load(request: gr.Request, who: str):
            run = request.query_params.get("run", "") if request else ""
            return run, (who or secrets.token_hex(8))  # an unknown id is told so (follow), not a blank page

        load = demo.load(on_load, [owner], [job_id, owner], queue=False, api_visibility="private")
        load.then(studio.check, controls, [validation, estimate_md, run_btn], queue=False, api_visibility="private")
        load.then(studio.follow_if_any, job_id, outputs, concurrency_limit=None, show_progress="hidden",
                  api_visibility="private")
        refresh.click(studio.runs_table, owner, [runs_df, pick], api_name="runs")
        load.then(studio.runs_table, owner, [runs_df, pick], api_visibility="private")
        compare_btn.click(studio.compare, [pick, owner], compare_plot, api_visibility="private")
        dl_btn.click(studio.download_runs, [pick, owner], [runs_files, runs_msg], api_name="download")
        del_btn.click(studio.delete_runs, [pick, owner], runs_msg, api_name="delete").then(
            studio.runs_table, owner, [runs_df, pick], api_visibility="private")

        def reopen(keys, who):
            """Open a cached run: a job that replays it from the cache (no training happens)."""
            run = next(iter(studio.selected(keys[:1] if keys else [], who)), None)
            if run is None:
                return "", gr.update(), "⚠ select a run first."
            job = studio.manager.submit(run.config, who or secrets.token_hex(8))
            return job.id, gr.Tabs(selected="distil"), ""

        launch(open_btn.click(reopen, [pick, owner], [job_id, tabs, runs_msg], queue=False, api_visibility="private"))
    return demo


