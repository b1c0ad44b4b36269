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
from pdd_engine.config import HINTS
from pdd_engine.methods import REGISTRY, all_params, owners
from pdd_engine.methods.spec import base_type
from pdd_engine.cache import Store
from pdd_engine import datasets
from pdd_engine.config import DistillConfig
from pdd_engine.estimate import config_warnings, estimate
from pdd_engine.evaluate import ARCHITECTURES, arch_changes
from pdd_engine.manifest import evaluation_table, manifest_arch

from . import render
from .jobs import JobManager

UPLOAD = "upload your own (.zip)"
# Shared fields shown under Advanced, in order, with their labels; after them come the registered
# methods' own hyper-parameters (each shown only for its methods). The rest comes from the preset.
SHARED = {"stage_ipc": "Images per class of each stage",
          "iterations": "Iterations per stage", "lr_img": "Image learning rate",
          "width": "Network width", "depth": "Network depth",
          "image_size": "Image size in pixels",
          "eval_epochs": "Evaluation epochs per stage", "eval_models": "Evaluation networks", "seed": "Seed",
          "transition_epochs": "PDD transition epochs", "filter_easy": "Drop easy real examples between stages",
          "zca": "ZCA whitening", "device": "Device", "precision": "Arithmetic of the matching",
          "eval_precision": "Arithmetic of the evaluation", "executor": "Executor", "transition": "PDD transition",
          "compare_base": "Compare with the base method alone (P=1)"}
CHOICE_LABELS = {"transition": [("chain: one network through U_1, U_2, ... (paper)", "chain"),
                                ("fresh: a new network on U_{i-1}", "fresh")],
                 "compare_base": [("at the final stage", "final"), ("at every stage", "every"), ("off", "off")],
                 "precision": [("float32", "float32"), ("bfloat16 (faster on CPUs with bf16 instructions)", "bfloat16")],
                 "eval_precision": [("float32 (the field's protocol)", "float32"),
                                    ("bfloat16 (faster on CPUs with bf16 instructions)", "bfloat16")],
                 "executor": [("the server's (PDD_EXECUTOR, else local)", ""), ("local: in the engine's process", "local"),
                              ("ray: Ray tasks (RAY_ADDRESS's cluster, else a local Ray)", "ray")]}
POLL_S = 0.25
LOSS_EVERY_S = 1.0  # the loss plot streams at most this often (it changes with every iteration)
PREVIEW_WAIT_S = 30.0  # a first read of a large dataset (MNIST: ~1 s; a big zip longer)
EXPORTED = "same as exported"  # the Evaluate tab's choice for the bundle's own architecture
NO_RUN = ("none: evaluate the uploaded bundle", "")
ESTIMATE_WAIT_S = 1.0  # a control change waits at most this long for a network's timing


@dataclass(frozen=True)
class Field:
    """One Advanced control: a config field or a method hyper-parameter."""

    name: str
    label: str
    type: Any  # without Optional: int, float, bool or a Literal
    optional: bool  # empty (or 0, which an emptied number box sends) means "automatic"
    default: Any
    hint: str = ""  # one line under the control: what the setting does

    def parse(self, value: Any) -> Any:
        if isinstance(value, str) and self.type in (int, float):
            value = value.strip()
        if self.optional and value in (None, "", 0, "0"):  # 0: what API clients of engine 0.x sent for automatic
            return None
        if self.type is int:
            return int_or(value, self.label)
        if self.type is float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise PDDError(f"{self.label} must be a number (got {value!r})",
                               f"enter a number for {self.label}, or leave it empty") from None
        return value

    @property
    def automatic(self) -> bool:
        """Empty means "chosen for you": a text box whose placeholder says what it becomes (a number
        box cannot be empty in the browser: it shows 0)."""
        return self.optional and self.type is not bool and typing.get_origin(self.type) is not typing.Literal


def advanced_fields() -> list[Field]:
    """The shared fields, then every registered method's hyper-parameters (a shared name once)."""
    hints, defaults = typing.get_type_hints(DistillConfig), DistillConfig()
    return ([Field(name, label, *base_type(hints[name]), getattr(defaults, name), HINTS.get(name, ""))
             for name, label in SHARED.items()]
            + [Field(name, meta["label"], *base_type(t), default, meta.get("hint", "")) for name, t, default, meta in all_params()])


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

    def check(self, *controls) -> tuple:
        """Validation message, time/memory estimate, whether Run is enabled, and what each automatic
        Advanced field becomes for this method and dataset (its placeholder)."""
        try:
            cfg = self.config(*controls)
        except PDDError as e:
            return f'<span class="pdd-error">⚠ {e}</span>', "", gr.update(interactive=False), *(gr.update() for _ in self.fields)
        shape = self.data_shape(cfg)
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
            est = (f"Estimate on this machine: **{estimate(cfg, shape, self.device(cfg), cost=cost, memory=memory)}**"
                   " (rough, ±2×).")
        except TimeoutError:  # the helper process is still timing this network: answer now, not later
            est = "Estimate on this machine: timing this network… (change any value to see it)."
        return valid, est, gr.update(interactive=True), *self.placeholders(cfg, shape)

    def data_shape(self, cfg: DistillConfig) -> Optional[tuple[int, int, int, int]]:
        """(channels, size, classes, training images) of the config's data: the registry's, else the
        dataset preview's (a user's zip), else None while that is still being read."""
        if (known := datasets.find(cfg.dataset).shape) is not None:
            return known
        try:
            p = self.manager.preview(cfg.dataset, self.data_root, timeout=ESTIMATE_WAIT_S)
        except (PDDError, TimeoutError):
            return None
        return p.channels, p.size, p.num_classes, p.train

    def placeholders(self, cfg: DistillConfig, shape: Optional[tuple]) -> list:
        """Each automatic field's placeholder: what it becomes here and why (``automatic`` alone until
        the data's size is known)."""
        auto = cfg.automatic(cfg.image_size or shape[1], shape[3]) if shape else {}
        return [gr.update(placeholder=f"automatic: {auto[f.name]}" if f.name in auto else "automatic")
                if f.automatic else gr.update() for f in self.fields]

    def prime(self) -> None:
        """Start the helper process's answers for the default controls (device, the network's timing,
        memory, the default dataset's preview) so the first page load finds them ready; returns at
        once, the work goes on there."""
        def work() -> None:
            self.check(*self.control_values(DistillConfig()))
            self.preview(DistillConfig().dataset)  # queued after the estimate's timing, in the same helper
        threading.Thread(target=work, daemon=True).start()

    def device(self, cfg: DistillConfig) -> str:
        return self.manager.device(cfg.device, timeout=ESTIMATE_WAIT_S)

    def preset_values(self, preset: str) -> list:
        cfg = DistillConfig.make(PRESETS.get(preset, {}))
        return [cfg.dataset, cfg.method, cfg.stages, cfg.ipc] + self.advanced_values(cfg)

    def advanced_values(self, cfg: DistillConfig) -> list:
        return advanced_values(cfg, self.fields)

    def control_values(self, cfg: DistillConfig, preset: str = "cpu-quick") -> list:
        return control_values(cfg, preset, self.fields)

    # -- data ---------------------------------------------------------------------------
    def preview(self, dataset: str, upload: Any = None) -> tuple[Any, str]:
        """The chosen dataset's sample grid and facts, read by the helper process (never downloads)."""
        if dataset == UPLOAD:
            path = getattr(upload, "name", upload)
            if not path:
                return None, "Upload a .zip with one folder of images per class (class_name/*.png) to see it here."
            dataset = f"folder:{self.uploads.get(str(path), path)}"  # a kept upload: its private copy
        try:
            p = self.manager.preview(dataset, self.data_root, timeout=PREVIEW_WAIT_S)
        except PDDError as e:
            return None, f'<span class="pdd-error">⚠ {e}</span>'
        except TimeoutError:
            return None, "Reading the dataset… (pick it again in a moment to see it)"
        return render.preview_image(p), render.preview_markdown(p)

    # -- evaluate a bundle ----------------------------------------------------------------
    def inspect_bundle(self, bundle: Any, run_key: str = "", owner: str = "") -> tuple[str, dict]:
        """What a bundle holds, in one line (or why it is not one), and its epochs as the placeholder."""
        try:
            path, _ = self.bundle_source(bundle, run_key, None, owner, required=False)
            if path is None:
                return "", gr.update(placeholder="as exported")
            m = self.manager.manifest(path)
        except PDDError as e:
            return f'<span class="pdd-error">⚠ {e}</span>', gr.update(placeholder="as exported")
        c, e = m["config"], m["evaluation"]
        line = (f"✓ {c['method'].upper()} on {shown_dataset(c['dataset'])}: {m['stages']} stage(s), "
                f"IPC {m['ipc']}, evaluated on {manifest_arch(m)} "
                f"({e['models']} networks × {e['epochs']} epochs per stage).")
        return line, gr.update(placeholder=f"as exported: {e['epochs']}")

    def bundle_source(self, bundle: Any, run_key: str, data: Any, owner: str,
                      required: bool = True) -> tuple[Optional[str], Optional[str]]:
        """(bundle path, data path) for an uploaded bundle or one of the owner's cached runs. A cached
        run on an uploaded zip reads that zip; an uploaded bundle on user data needs the user's zip."""
        upload = getattr(bundle, "name", bundle)
        if upload:
            if not str(upload).lower().endswith(".zip"):
                raise PDDError(f"{Path(str(upload)).name} is not a .zip file", "upload a bundle exported by PDD Studio")
            return str(upload), getattr(data, "name", data) or None
        if not run_key:
            if required:
                raise PDDError("no bundle to evaluate", "upload a bundle (.zip) or pick one of your runs")
            return None, None
        run = next(iter(self.selected([run_key], owner)), None)
        if run is None:
            raise PDDError("that run is no longer in the cache", "pick another run, or press Refresh on the Runs tab")
        done = self.manager.export(run.key, owner)
        if done.path is None:
            raise PDDError(f"run {run.id} could not be exported ({done.error})", "run it again with the same settings")
        own = run.config.dataset.removeprefix("folder:") if run.config.dataset.startswith("folder:") else None
        return done.path, own

    def evaluate(self, bundle: Any, run_key: str, archs: list[str], models: Any, epochs: Any, data: Any,
                 owner: str = ""):
        """Re-train fresh networks of each chosen architecture on the bundle's stages (curriculum),
        streaming the table and the curves as each architecture finishes."""
        try:
            path, data_path = self.bundle_source(bundle, run_key, data, owner)
            m = self.manager.manifest(path)
            if not archs:
                raise PDDError("no architecture is chosen", "tick one or more under Architectures")
            n = int_or(models, "Networks per architecture") if models not in (None, "") else None
            ep = int_or(epochs, "Epochs per stage") if str(epochs or "").strip() not in ("", "0") else None
            if (n is not None and n < 1) or (ep is not None and ep < 1):
                raise PDDError("networks and epochs must be 1 or more", "enter a whole number >= 1, or leave Epochs empty")
            for arch in archs:
                if arch != EXPORTED:
                    arch_changes(arch)  # every name checked before any training starts
            if m["config"]["dataset"].startswith("folder:") and not data_path:
                raise PDDError("this bundle was made on your own data, and a bundle never says where it is",
                               "upload the same .zip under 'Its dataset'")
        except PDDError as e:
            yield f'<span class="pdd-error">⚠ {e}</span>', None, None
            return
        results: list = []
        for i, arch in enumerate(archs):
            name = None if arch == EXPORTED else arch
            yield (f"Evaluating {arch} ({i + 1}/{len(archs)}): {n or m['evaluation']['models']} network(s), "
                   f"{ep or m['evaluation']['epochs']} epochs per stage…"), *self.evaluation_view(m, results)
            try:
                results.append((name, self.manager.evaluate(path, name, n, ep, self.data_root, data_path).result()))
            except PDDError as e:
                yield f'<span class="pdd-error">⚠ {arch}: {e}</span>', *self.evaluation_view(m, results)
                return
        yield f"✓ Evaluated on {len(results)} architecture(s).", *self.evaluation_view(m, results)

    @staticmethod
    def evaluation_view(manifest: dict, results: list) -> tuple:
        headers, rows = evaluation_table(manifest, results)
        return {"headers": headers, "data": rows}, render.evaluation_figure(manifest, results)

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
        seen, shown = -1, {}
        while True:
            n = len(job.events)
            if n != seen or job.state == "queued":
                seen = n
                view = render.RunView.of(list(job.events))
                finished = job.finished
                timing = job.timing(view.current, view.phase, view.iteration, view.iterations) if view.current else None
                yield self.frame(view, job.state, self.manager.position(job.id), job if finished else None, timing=timing,
                                 shown=shown)
                if finished:
                    return
            time.sleep(POLL_S)

    def follow_if_any(self, job_id: str):
        """On page load: reattach to the run named in the URL, if any."""
        if not job_id:
            yield tuple(gr.skip() for _ in range(9))
            return
        yield from self.follow(job_id)

    def frame(self, view: render.RunView, state: str, position: int = 0, job=None, extra: str = "",
              timing: Optional[tuple] = None, shown: Optional[dict] = None) -> tuple:
        """The page's outputs for ``view``. With ``shown`` (what this stream already sent, updated
        here), an output whose content has not changed is skipped, and the loss plot is redrawn at
        most every LOSS_EVERY_S: the server renders less, and the browser redraws less, on the cores
        the engine runs on."""
        bundle, stages = None, None
        status = render.status_markdown(view, state, position, timing) + (f" {extra}" if extra else "")
        if view.done and view.exported is not None:  # written by the engine's worker before Done
            bundle, stages = view.exported.path, view.exported.stage_paths or None
            if view.exported.error:
                status += f"<br>⚠ export failed: {view.exported.error}"
        running = state in ("queued", "running")
        now = time.time()
        loss_due = shown is None or now - shown.get("loss_at", 0.0) >= LOSS_EVERY_S or not running
        parts = [  # (name, what decides its content, how to draw it)
            ("progress", render.progress_html(view), None),
            ("grid", (id(view.images), view.current), lambda: render.grid_html(view.images, view.current)),
            ("loss", sum(map(len, view.losses.values())) if loss_due else shown.get("loss"), lambda: render.loss_figure(view)),
            ("accuracy", (len(view.evals), view.done is not None), lambda: render.accuracy_figure(view)),
            ("bundle", bundle, None), ("stages", tuple(stages or ()), lambda: stages),
            ("stop", running, lambda: gr.update(interactive=running)),
            ("resume", (running, state), lambda: gr.update(interactive=not running and state != "done")),
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

    # -- runs tab -----------------------------------------------------------------------
    def runs_table(self, owner: str = "") -> tuple[list[list], dict, dict, str]:
        """The Runs table, the run pickers (Runs and Evaluate tabs), and the empty state's text."""
        rows, choices = [], []
        for r in runs.list_runs(self.store, None if self.public else owner):
            c, last = r.config, r.final
            rows.append([r.id, shown_dataset(c.dataset), c.method, c.stages, c.ipc, c.iterations,
                         f"{100 * last.mean:.1f} ± {100 * last.std:.1f}",
                         "–" if last.base_mean is None else f"{100 * last.base_mean:.1f}", f"{100 * last.random_mean:.1f}",
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished))])
            choices.append((r.label, r.key))
        empty = "" if rows else RUNS_EMPTY
        return rows, gr.update(choices=choices, value=[]), gr.update(choices=[NO_RUN] + choices, value=""), empty

    def selected(self, keys: Optional[list[str]], owner: str = "") -> list[runs.RunRecord]:
        """The chosen runs still in the cache that ``owner`` may see (each read on its own)."""
        mine = None if self.public else runs.owned(self.store, owner)
        return list(filter(None, (runs.read(self.store, k) for k in keys or [] if mine is None or k in mine)))

    def compare(self, keys: list[str], owner: str = "") -> tuple[Any, str]:
        """The chosen runs' curves on one plot, and the settings in which they differ."""
        chosen = self.selected(keys, owner)
        if not chosen:
            return None, "⚠ select one or more runs first."
        return render.compare_figure(chosen), runs.config_differences(chosen)

    def confirm_delete(self, keys: list[str], owner: str = "") -> tuple[str, dict]:
        """Ask before deleting: what would go, and the buttons that decide."""
        chosen = self.selected(keys, owner)
        if not chosen:
            return "⚠ select one or more runs first.", gr.update(visible=False)
        names = ", ".join(r.id for r in chosen)
        return (f"Delete {len(chosen)} run record(s) ({names})? Their cached stages stay for runs that share them.",
                gr.update(visible=True))

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
    """The Advanced controls' values for ``cfg`` (other methods' controls keep their defaults);
    an automatic field is text: empty when unset."""
    flat = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in cfg.flat().items()}
    values = [(f, flat.get(f.name, f.default)) for f in fields or advanced_fields()]
    return [("" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) if f.automatic
            else "" if v is None else v for f, v in values]


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
    """The Gradio control for one Advanced field; an automatic one shows what it becomes as its
    placeholder (filled in by :meth:`Studio.check` for the chosen method and dataset)."""
    if typing.get_origin(f.type) is typing.Literal:
        return gr.Dropdown(CHOICE_LABELS.get(f.name, list(typing.get_args(f.type))), value="" if f.default is None else f.default,
                           label=f.label,
                           info=f.hint or None)
    if f.type is bool:
        return gr.Checkbox(f.default, label=f.label, info=f.hint or None)
    if f.automatic:  # empty: chosen for you; the placeholder says what it becomes (numbers, or "6,4" lists)
        return gr.Textbox("", label=f.label, info=f.hint or None, placeholder="automatic")
    return gr.Number(f.default, label=f.label, precision=0 if f.type is int else None, info=f.hint or None)


def int_or(value: Any, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PDDError(f"{name} must be a whole number (got {value!r})", f"enter a whole number for {name}") from None
    if f != int(f):
        raise PDDError(f"{name} must be a whole number (got {value})", f"enter a whole number for {name}")
    return int(f)


RUNS_EMPTY = ("**No finished runs yet.** Every run you finish on the *Distil* tab is listed here with its accuracy "
              "beside the base method alone and a random subset; select runs to open, compare, download or delete them.")
HOW_PDD_WORKS = """**Progressive Dataset Distillation** builds the synthetic set in **P stages**. Stage *i* distils a small
set S_i with the chosen base method, matching real training *from where training on S_1 ∪ … ∪ S_(i-1) left off*;
then S_i is frozen and the next stage adds to it. Networks trained on the result follow the same **curriculum**:
S_1 first, then S_1 ∪ S_2, and so on.

- **Grid**: a row per class; orange frames are the stage being distilled, grey ones earlier (frozen) stages.
- **Accuracy**: PDD after each stage (cumulative images per class), the base method alone (P = 1) at the same
  images per class, and a random real subset trained with the same curriculum. PDD is working when its curve is
  above both.
- **Cache**: every finished stage is stored; Stop, Resume or the same settings later start from there."""

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
                        # the run's controls and its one-line status: pinned to the bottom of a phone's screen
                        with gr.Group(elem_id="pdd-runbar"):
                            status = gr.Markdown("Pick a dataset and press **Run**.", elem_id="pdd-status")
                            with gr.Row():
                                run_btn = gr.Button("Run", variant="primary", elem_id="pdd-run")
                                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="pdd-stop")
                                resume_btn = gr.Button("Resume", interactive=False, elem_id="pdd-resume")
                        with gr.Accordion("Advanced", open=False):
                            adv = [control(f) for f in studio.fields]
                            for f, c in zip(studio.fields, adv):
                                c.visible = shown_for(f.name, defaults.method)
                    with gr.Column(scale=2):
                        with gr.Accordion("How PDD works, and how to read this page", open=False, elem_id="pdd-how"):
                            gr.Markdown(HOW_PDD_WORKS)
                        with gr.Accordion("Data", open=True, elem_id="pdd-data") as data_panel:
                            with gr.Row():  # side by side; one under the other on a phone
                                with gr.Column(min_width=280):
                                    data_facts = gr.Markdown(elem_id="pdd-data-facts")
                                with gr.Column(min_width=280):
                                    data_grid = gr.Image(label="Real training images (a row per class)", type="pil",
                                                         elem_id="pdd-data-grid", height=300)
                        progress = gr.HTML(render.progress_html(render.RunView()))
                        gr.Markdown("**Synthetic images** (rows: classes; orange: this stage, grey: frozen earlier stages; "
                                    "hover an image for its stage, class and index)")
                        grid = gr.HTML(render.grid_html(None), elem_id="pdd-grid")
                        with gr.Row():
                            loss_plot = gr.Plot(label="Loss", elem_id="pdd-loss")
                            acc_plot = gr.Plot(label="Accuracy", elem_id="pdd-acc")
                        with gr.Row():
                            bundle = gr.File(label="Bundle (zip: manifest, tensors, PNGs)", elem_id="pdd-bundle")
                            stage_files = gr.File(label="Each stage's images", file_count="multiple")
            with gr.Tab("Evaluate", id="evaluate"):
                gr.Markdown("Train fresh networks on a bundle's stages (the same curriculum) and compare architectures: "
                            "how well does the distilled data transfer?")
                with gr.Row():
                    ev_bundle = gr.File(label="Bundle (.zip exported by PDD Studio)", file_types=[".zip"], elem_id="pdd-ev-bundle")
                    with gr.Column():
                        ev_run = gr.Dropdown([NO_RUN], value="", label="…or one of your runs", elem_id="pdd-ev-run")
                        ev_data = gr.File(label="Its dataset (.zip): only for a bundle made on your own data",
                                          file_types=[".zip"], elem_id="pdd-ev-data")
                ev_archs = gr.Dropdown([EXPORTED, *ARCHITECTURES], value=[EXPORTED, "convnet-w64"], multiselect=True,
                                       allow_custom_value=True, label="Architectures", elem_id="pdd-ev-archs",
                                       info="pick or type: convnet-dN-wM (depth N, width M; -batch/-instance/-none norm), "
                                            "resnet-wN (ResNet-18, batch norm)")
                with gr.Row():
                    ev_models = gr.Number(2, label="Networks per architecture", precision=0, minimum=1, maximum=20,
                                          info="more networks: a tighter ± std, proportionally slower")
                    ev_epochs = gr.Textbox("", label="Epochs per stage", placeholder="as exported",
                                           info="empty: the bundle's own protocol", elem_id="pdd-ev-epochs")
                ev_btn = gr.Button("Evaluate", variant="primary", elem_id="pdd-ev-run-btn")
                ev_msg = gr.Markdown(elem_id="pdd-ev-msg")
                ev_table = gr.Dataframe(interactive=False, elem_id="pdd-ev-table", label="Test accuracy % (mean ± std)")
                ev_plot = gr.Plot(label="Accuracy", elem_id="pdd-ev-plot")
            with gr.Tab("Runs", id="runs"):
                runs_empty = gr.Markdown(RUNS_EMPTY, elem_id="pdd-runs-empty")
                runs_df = gr.Dataframe(headers=["run", "dataset", "method", "P", "IPC", "iterations", "accuracy %",
                                                "base alone %", "random %", "finished"], interactive=False)
                with gr.Row():
                    pick = gr.Dropdown([], multiselect=True, label="Select runs", scale=3)
                    refresh = gr.Button("Refresh", scale=1)
                with gr.Row():
                    open_btn = gr.Button("Open (first selected)")
                    compare_btn = gr.Button("Compare")
                    dl_btn = gr.Button("Download")
                    del_btn = gr.Button("Delete…", variant="stop", elem_id="pdd-delete")
                runs_msg = gr.Markdown(elem_id="pdd-runs-msg")
                with gr.Row(visible=False) as confirm_row:
                    confirm_btn = gr.Button("Yes, delete", variant="stop", elem_id="pdd-delete-confirm")
                    cancel_btn = gr.Button("Cancel", elem_id="pdd-delete-cancel")
                with gr.Row():
                    compare_plot = gr.Plot(label="Comparison", elem_id="pdd-compare")
                    compare_md = gr.Markdown(elem_id="pdd-compare-settings")
                runs_files = gr.File(label="Bundles", file_count="multiple")

        controls = [dataset, upload, method, stages, ipc, preset, *adv]
        outputs = [status, progress, grid, loss_plot, acc_plot, bundle, stage_files, stop_btn, resume_btn]
        checked = [validation, estimate_md, run_btn, *adv]
        gr.on([c.change for c in controls], studio.check, controls, checked,
              trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        dataset.change(lambda d: gr.update(visible=d == UPLOAD), dataset, upload, queue=False, api_visibility="private")
        gr.on([dataset.change, upload.change], studio.preview, [dataset, upload], [data_grid, data_facts],
              trigger_mode="always_last", show_progress="minimal", api_name="preview_dataset")
        preset.change(studio.preset_values, preset, [dataset, method, stages, ipc, *adv], queue=False,
                      api_visibility="private")
        method.change(lambda m: [gr.update(visible=shown_for(f.name, m)) for f in studio.fields], method, adv, queue=False,
                      api_visibility="private")

        def launch(evt, private=True):
            return (evt.then(None, job_id, job_id, js=SET_URL, api_visibility="private")
                    .then(studio.follow, job_id, outputs, concurrency_limit=None, show_progress="hidden",
                          api_name=None if private else "follow", api_visibility="private" if private else "public"))

        started = run_btn.click(studio.start, [owner, *controls], [job_id, owner, validation], queue=False,
                                api_name="start")
        started.then(lambda: gr.Accordion(open=False), None, data_panel, queue=False, api_visibility="private")  # room for the run
        launch(started, private=False)
        launch(resume_btn.click(studio.resume, [job_id, owner], [job_id, owner, validation], queue=False,
                                api_name="resume"))
        stop_btn.click(studio.stop, [job_id, owner], validation, queue=False, api_name="stop")

        def on_load(request: gr.Request, who: str):
            run = request.query_params.get("run", "") if request else ""
            return run, (who or secrets.token_hex(8))  # an unknown id is told so (follow), not a blank page

        load = demo.load(on_load, [owner], [job_id, owner], queue=False, api_visibility="private")
        load.then(studio.check, controls, checked, queue=False, api_visibility="private")
        load.then(studio.follow_if_any, job_id, outputs, concurrency_limit=None, show_progress="hidden",
                  api_visibility="private")
        load.then(studio.preview, [dataset, upload], [data_grid, data_facts], api_visibility="private")
        listing = [runs_df, pick, ev_run, runs_empty]
        refresh.click(studio.runs_table, owner, listing, api_name="runs")
        load.then(studio.runs_table, owner, listing, api_visibility="private")
        compare_btn.click(studio.compare, [pick, owner], [compare_plot, compare_md], api_visibility="private")
        dl_btn.click(studio.download_runs, [pick, owner], [runs_files, runs_msg], api_name="download")
        del_btn.click(studio.confirm_delete, [pick, owner], [runs_msg, confirm_row], api_visibility="private")
        cancel_btn.click(lambda: ("", gr.update(visible=False)), None, [runs_msg, confirm_row], api_visibility="private")
        confirm_btn.click(studio.delete_runs, [pick, owner], runs_msg, api_name="delete").then(
            lambda: gr.update(visible=False), None, confirm_row, api_visibility="private").then(
            studio.runs_table, owner, listing, api_visibility="private")

        gr.on([ev_bundle.change, ev_run.change], studio.inspect_bundle, [ev_bundle, ev_run, owner], [ev_msg, ev_epochs],
              api_visibility="private")
        ev_btn.click(studio.evaluate, [ev_bundle, ev_run, ev_archs, ev_models, ev_epochs, ev_data, owner],
                     [ev_msg, ev_table, ev_plot], api_name="evaluate_bundle")

        def reopen(keys, who):
            """Open a cached run: a job that replays it from the cache (no training happens)."""
            run = next(iter(studio.selected(keys[:1] if keys else [], who)), None)
            if run is None:
                return "", gr.update(), "⚠ select a run first."
            job = studio.manager.submit(run.config, who or secrets.token_hex(8))
            return job.id, gr.Tabs(selected="distil"), ""

        launch(open_btn.click(reopen, [pick, owner], [job_id, tabs, runs_msg], queue=False, api_visibility="private"))
    return demo


