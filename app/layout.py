"""The studio's page: Gradio blocks, with every setting's control made from the service's ``schema()``
(label, hint, kind, bounds, choices, owning methods), wired to :class:`app.studio.Studio`.

Public API endpoints (``gradio_client``): ``/start`` takes the settings by name (one JSON object),
``/settings`` lists them, and ``/follow``, ``/stop``, ``/resume``, ``/runs``, ``/download``, ``/delete``,
``/preview_dataset`` and ``/evaluate_bundle`` take the owner token ``/start`` returned. The service checks
that token on every one of them.
"""

from __future__ import annotations

import gradio as gr

from . import render
from .identity import sign_in_enabled, token_for
from .studio import ALL, EXPORTED, NO_RUN, UPLOAD, Studio, shown_for

HOW_PDD_WORKS = """**Progressive Dataset Distillation** builds the synthetic set in **P stages**. Stage *i* distils a small
set S_i with the chosen base method, matching real training *from where training on S_1 ∪ … ∪ S_(i-1) left off*;
then S_i is frozen and the next stage adds to it. Networks trained on the result follow the same **curriculum**:
S_1 first, then S_1 ∪ S_2, and so on.

- **Grid**: a row per class; orange frames are the stage being distilled, grey ones earlier (frozen) stages.
- **Accuracy**: PDD after each stage (cumulative images per class), the base method alone (P = 1) at the same
  images per class, those P = 1 images trained for as many epochs as PDD's curriculum, and a random real subset
  trained with the same curriculum. PDD made better images when its curve is above all three; if it only ties
  "trained as long", its gain was the extra epochs.
- **Cache**: every finished stage is stored; Stop, Resume or the same settings later start from there."""

SET_URL = """(id) => { if (id) { const u = new URL(window.location); u.searchParams.set('run', id);
  window.history.replaceState(null, '', u); } return id; }"""


def Shown(value: str = "", **kw) -> gr.Markdown:  # noqa: N802  (a component, named like one)
    """A Markdown output of text the page did not write (engine messages, a bundle's or a dataset's own text,
    through render.plain): no LaTeX, so "$$...$$" in it is no formula."""
    return gr.Markdown(value, latex_delimiters=[], **kw)


def control(spec: dict):
    """The Gradio control for one setting; an automatic one shows what it becomes as its placeholder
    (filled in by :meth:`Studio.check` for the chosen method and dataset)."""
    hint = spec["hint"] or None
    if spec["kind"] == "choice":
        choices = [(label, "" if value is None else value) for label, value in spec["choices"]]
        return gr.Dropdown(choices, value="" if spec["default"] is None else spec["default"], label=spec["label"], info=hint)
    if spec["kind"] == "bool":
        return gr.Checkbox(spec["default"], label=spec["label"], info=hint)
    if Studio.automatic(spec):  # empty: chosen for you; the placeholder says what it becomes
        return gr.Textbox("", label=spec["label"], info=hint, placeholder="automatic")
    if spec["kind"] == "text":  # a required text setting (the augmentation): its value, in a text box
        return gr.Textbox(spec["default"], label=spec["label"], info=hint)
    return gr.Number(spec["default"], label=spec["label"], precision=0 if spec["kind"] == "int" else None, info=hint,
                     minimum=spec["minimum"], maximum=spec["maximum"])


def build(studio: Studio) -> gr.Blocks:
    schema, spec = studio.schema, studio.settings
    defaults = studio.control_values()
    # the web framework's temporary copies of uploads and downloads: checked hourly, deleted after a day
    with gr.Blocks(title="PDD Studio", delete_cache=(3600, 86400)) as demo:
        token = gr.BrowserState("", storage_key="pdd_studio_owner")
        run_id = gr.Textbox(visible=False, elem_id="pdd-job-id")
        with gr.Row():
            gr.Markdown("# PDD Studio\nDistil a dataset into a few synthetic images per class, **stage by stage** "
                        "(Progressive Dataset Distillation). Every finished stage is cached: stop, resume and re-open "
                        "freely.")
            if sign_in_enabled():
                gr.LoginButton(scale=0)
        with gr.Tabs() as tabs:
            with gr.Tab("Distil", id="distil"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        dataset = gr.Dropdown([(f"{d['name']} ({d['availability']})", d["name"]) for d in schema["datasets"]
                                               if not d["scheme"]] + [(UPLOAD, UPLOAD)], value=defaults[0],
                                              label=spec["dataset"]["label"])
                        upload = gr.File(label="Your dataset: a .zip of class_name/*.png", file_types=[".zip"], visible=False)
                        method = gr.Dropdown([(m["title"], m["name"]) for m in schema["methods"]], value=defaults[2],
                                             label=spec["method"]["label"])
                        with gr.Row():
                            stages, ipc = (gr.Number(defaults[i], label=spec[n]["label"], precision=0, info=spec[n]["hint"],
                                                     minimum=spec[n]["minimum"], maximum=spec[n]["maximum"])
                                           for i, n in ((3, "stages"), (4, "ipc")))
                        preset = gr.Dropdown(list(studio.presets), value="cpu-quick", label="Preset")
                        validation = gr.HTML(elem_id="pdd-validation")
                        estimate = Shown()
                        # the run's controls and its one-line status: pinned to the bottom of a phone's screen
                        with gr.Group(elem_id="pdd-runbar"):
                            status = Shown("Pick a dataset and press **Run**.", elem_id="pdd-status")
                            with gr.Row():
                                run_btn = gr.Button("Run", variant="primary", elem_id="pdd-run")
                                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="pdd-stop")
                                resume_btn = gr.Button("Resume", interactive=False, elem_id="pdd-resume")
                        with gr.Accordion("Advanced", open=False):
                            adv = [control(f) for f in studio.fields]
                            for f, c in zip(studio.fields, adv):
                                c.visible = shown_for(f, defaults[2])
                    with gr.Column(scale=2):
                        with gr.Accordion("How PDD works, and how to read this page", open=False, elem_id="pdd-how"):
                            gr.Markdown(HOW_PDD_WORKS)
                        with gr.Accordion("Data", open=True, elem_id="pdd-data") as data_panel:
                            with gr.Row():  # side by side; one under the other on a phone
                                with gr.Column(min_width=280):
                                    data_facts = Shown(elem_id="pdd-data-facts")
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
                        ev_run = gr.Dropdown([NO_RUN], value="", label="…or one of your runs", elem_id="pdd-ev-run",
                                             allow_custom_value=True)
                        ev_data = gr.File(label="Its dataset (.zip): only for a bundle made on your own data",
                                          file_types=[".zip"], elem_id="pdd-ev-data")
                ev_archs = gr.Dropdown([EXPORTED, *schema["architectures"]], value=[EXPORTED, "convnet-w64"], multiselect=True,
                                       allow_custom_value=True, label="Architectures", elem_id="pdd-ev-archs",
                                       info="pick or type: convnet-dN-wM (depth N, width M; -batch/-instance/-none norm), "
                                            "resnet-wN (ResNet-18, batch norm)")
                with gr.Row():
                    ev_models = gr.Number(2, label="Networks per architecture", precision=0, minimum=1, maximum=20,
                                          info="more networks: a tighter ± std, proportionally slower")
                    ev_epochs = gr.Textbox("", label="Epochs per stage", placeholder="as exported",
                                           info="empty: the bundle's own protocol", elem_id="pdd-ev-epochs")
                ev_btn = gr.Button("Evaluate", variant="primary", elem_id="pdd-ev-run-btn")
                ev_msg = Shown(elem_id="pdd-ev-msg")
                ev_table = gr.Dataframe(interactive=False, elem_id="pdd-ev-table", label="Test accuracy % (mean ± std)")
                ev_plot = gr.Plot(label="Accuracy", elem_id="pdd-ev-plot")
            with gr.Tab("Results", id="results"):
                gr.Markdown("Where PDD gains and where it does not: the benchmark's measured rows (3 seeds each; "
                            "`docs/benchmarks.md` says how they were run). Each PDD row stands beside its base method "
                            "alone (P = 1), those P = 1 images trained as long as PDD's curriculum, and its own random "
                            "curriculum; Δ in points, ✓ where it is larger than both standard deviations. Pick a "
                            "row to see its per-stage curve, or to run it yourself.")
                with gr.Row():
                    res_dataset, res_method, res_ipc = (gr.Dropdown([ALL], value=ALL, label=label, scale=1)
                                                        for label in ("Dataset", "Method", "IPC"))
                res_empty = Shown(elem_id="pdd-results-empty")
                res_df = gr.Dataframe(headers=["dataset", "IPC", "method", "P", "protocol", "setup", "PDD %", "P = 1 %",
                                               "Δ P = 1", "P = 1, same epochs %", "Δ same epochs", "own random %",
                                               "Δ random", "seeds", "wall s"], interactive=False, elem_id="pdd-results",
                                      wrap=True, column_widths=["75px", "45px", "85px", "35px", "80px", "150px", "100px", "100px", "70px",
                                                                "100px", "70px", "100px", "70px", "55px", "65px"])
                with gr.Row():
                    res_pick = gr.Dropdown([], label="Row", scale=3, elem_id="pdd-results-pick")
                    res_use = gr.Button("Use these settings", scale=1, elem_id="pdd-results-use")
                res_plot = gr.Plot(label="Per stage", elem_id="pdd-results-plot")
            with gr.Tab("Runs", id="runs"):
                runs_empty = Shown(elem_id="pdd-runs-empty")
                runs_df = gr.Dataframe(headers=["run", "dataset", "method", "P", "IPC", "iterations", "accuracy %",
                                                "base alone %", "base, same epochs %", "random %", "finished"],
                                       interactive=False)
                with gr.Row():
                    # allow_custom_value: an API client names its runs by key (the service checks they are its own)
                    pick = gr.Dropdown([], multiselect=True, label="Select runs", scale=3, allow_custom_value=True)
                    refresh = gr.Button("Refresh", scale=1)
                with gr.Row():
                    open_btn = gr.Button("Open (first selected)")
                    compare_btn = gr.Button("Compare")
                    dl_btn = gr.Button("Download")
                    del_btn = gr.Button("Delete…", variant="stop", elem_id="pdd-delete")
                runs_msg = Shown(elem_id="pdd-runs-msg")
                with gr.Row(visible=False) as confirm_row:
                    confirm_btn = gr.Button("Yes, delete", variant="stop", elem_id="pdd-delete-confirm")
                    cancel_btn = gr.Button("Cancel", elem_id="pdd-delete-cancel")
                with gr.Row():
                    compare_plot = gr.Plot(label="Comparison", elem_id="pdd-compare")
                    compare_md = Shown(elem_id="pdd-compare-settings")
                runs_files = gr.File(label="Bundles", file_count="multiple")

        controls = [dataset, upload, method, stages, ipc, preset, *adv]
        outputs = [status, progress, grid, loss_plot, acc_plot, bundle, stage_files, stop_btn, resume_btn]
        checked = [validation, estimate, run_btn, *adv]
        private = dict(api_visibility="private")
        gr.on([c.change for c in controls], studio.check, [token, *controls], checked, trigger_mode="always_last",
              show_progress="hidden", **private)
        dataset.change(lambda d: gr.update(visible=d == UPLOAD), dataset, upload, queue=False, **private)
        image_size = adv[[f["name"] for f in studio.fields].index("image_size")]
        shown = [token, dataset, upload, image_size]
        # the settings are checked again once the data is read: a slow upload's line said "still being read"
        gr.on([dataset.change, upload.change, image_size.change], studio.preview, shown, [data_grid, data_facts],
              trigger_mode="always_last", show_progress="minimal", api_name="preview_dataset").then(
            studio.check, [token, *controls], checked, show_progress="hidden", **private)
        preset.change(studio.preset_values, preset, [dataset, method, stages, ipc, *adv], queue=False, **private)
        method.change(lambda m: [gr.update(visible=shown_for(f, m)) for f in studio.fields], method, adv, queue=False,
                      **private)

        def then_follow(event, public: bool = False):
            return (event.then(None, run_id, run_id, js=SET_URL, **private)
                    .then(studio.follow, [run_id, token], outputs, concurrency_limit=None, show_progress="hidden",
                          **(dict(api_name="follow") if public else private)))

        started = run_btn.click(studio.start_page, [token, *controls], [run_id, token, validation], queue=False, **private)
        started.then(lambda: gr.Accordion(open=False), None, data_panel, queue=False, **private)  # room for the run
        then_follow(started, public=True)
        then_follow(resume_btn.click(studio.resume, [run_id, token], [run_id, token, validation], queue=False,
                                     api_name="resume"))
        stop_btn.click(studio.stop, [run_id, token], validation, queue=False, api_name="stop")
        gr.api(studio.start, api_name="start")
        gr.api(studio.setting_list, api_name="settings")

        def on_load(request: gr.Request, who: str):
            run = request.query_params.get("run", "") if request else ""
            return run, token_for(who)  # an unknown id is told so (follow), not a blank page

        load = demo.load(on_load, [token], [run_id, token], queue=False, **private)
        load.then(studio.check, [token, *controls], checked, queue=False, **private)
        load.then(studio.follow_if_any, [run_id, token], outputs, concurrency_limit=None, show_progress="hidden", **private)
        load.then(studio.preview, shown, [data_grid, data_facts], **private)
        listing = [runs_df, pick, ev_run, runs_empty]
        refresh.click(studio.runs_table, token, listing, api_name="runs")
        load.then(studio.runs_table, token, listing, **private)
        compare_btn.click(studio.compare, [pick, token], [compare_plot, compare_md], **private)
        dl_btn.click(studio.download, [pick, token], [runs_files, runs_msg], api_name="download")
        del_btn.click(studio.confirm_delete, [pick, token], [runs_msg, confirm_row], **private)
        cancel_btn.click(lambda: ("", gr.update(visible=False)), None, [runs_msg, confirm_row], **private)
        confirm_btn.click(studio.delete, [pick, token], runs_msg, api_name="delete").then(
            lambda: gr.update(visible=False), None, confirm_row, **private).then(studio.runs_table, token, listing, **private)
        gr.on([ev_bundle.change, ev_run.change], studio.inspect_bundle, [ev_bundle, ev_run, token], [ev_msg, ev_epochs],
              **private)
        ev_btn.click(studio.evaluate, [ev_bundle, ev_run, ev_archs, ev_models, ev_epochs, ev_data, token],
                     [ev_msg, ev_table, ev_plot], api_name="evaluate_bundle")
        then_follow(open_btn.click(studio.open, [pick, token], [run_id, tabs, runs_msg], queue=False, **private))
        filters = [res_dataset, res_method, res_ipc]
        load.then(studio.result_filters, None, filters, **private).then(
            studio.results_table, filters, [res_df, res_pick, res_empty], **private)
        gr.on([f.input for f in filters], studio.results_table, filters, [res_df, res_pick, res_empty], **private)
        res_pick.change(studio.result_curve, res_pick, res_plot, **private)
        res_use.click(studio.use_result, res_pick, [dataset, method, stages, ipc, *adv, tabs], **private)
    return demo
