"""The web app: rendering, the studio's callbacks over the service, and the real server driven by gradio_client,
including every public endpoint called by a stranger with another visitor's ids."""

import html
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app import render
from app.identity import owner_of, token_for
from app.studio import Studio, frame
from pdd_engine import events as E
from pdd_engine.export import load_bundle
from pdd_engine.service import RunState, RunView, Service
from tests.apphelpers import running_app, tampered_copy

TINY = {"stages": 2, "ipc": 2, "iterations": 15, "width": 16, "eval_epochs": 20, "eval_models": 2,
        "transition_epochs": 5, "device": "cpu"}


def fake_stream():
    imgs = np.zeros((20, 8, 8, 1), np.uint8)
    labels = np.repeat(np.arange(10), 2)
    new = np.tile([False, True], 10)
    return [E.RunStarted("run:abc", {"method": "dm"}, {}, 2), E.StageStarted(1, 2, False), E.Progress(1, 5, 10, 0.5),
            E.StageImages(1, imgs[::2], labels[::2], np.ones(10, bool), list("0123456789")),
            E.StageEvaluated(1, [0.5, 0.6], [0.4, 0.4], 1), E.StageFinished(1, False, 1.0),
            E.StageStarted(2, 2, True), E.Progress(2, 10, 10, 0.2),
            E.StageImages(2, imgs, labels, new, list("0123456789")), E.Progress(2, 3, 10, 9.0, "base"),
            E.StageEvaluated(2, [0.7, 0.7], [0.5, 0.6], 2, [0.6, 0.62], [0.66, 0.68])]


def test_the_engines_warnings_reach_the_status_once_each_and_as_text():
    """A run-time warning (an unstable MTT matching: images that may be far worse than they look) stays under
    the status line from the stage that raised it to Done, each once (a replayed stage says it again), as
    literal text, at most MAX_WARNINGS of them and a count of the rest."""
    warn = "warning: the trajectory matching was unstable [see](https://elsewhere.example). Fix: lower lr_img"
    stream = fake_stream()[:6] + [E.Message(1, warn), E.Message(1, "expert 1/2 trained"), E.Message(1, warn)]
    view = render.RunView.of(stream)
    assert view.warnings == [f"stage 1: {warn}"]
    view.apply(E.Done("run:abc", [{"mean": 0.7, "std": 0.0, "random_mean": 0.5, "random_std": 0.0}], 2.0, [1, 2]))
    shown = render.status_markdown(view, "done")
    assert "](" not in shown and "&#93;&#40;" in shown  # not markup: a warning can quote a visitor's input
    shown = html.unescape(shown)  # as the page reads it
    assert shown.startswith("**Done** in 2.0 s") and shown.count("**Warning** — stage 1: the trajectory matching") == 1
    assert "expert 1" not in shown
    assert "**Warning**" not in render.status_markdown(render.RunView.of(fake_stream()), "running")
    many = render.RunView(stages=2, current=2, messages=[f"stage {s}: warning: {s}" for s in range(1, 7)])
    shown = render.status_markdown(many, "running")
    assert shown.count("**Warning**") == render.MAX_WARNINGS and f"(and {6 - render.MAX_WARNINGS} more warning(s))" in shown


def test_run_view_folds_events_and_renders():
    view = render.RunView.of(fake_stream())
    assert view.stages == 2 and view.cached_stages == {2} and sorted(view.evals) == [1, 2]
    assert 0.5 <= view.fraction < 1
    assert "stage 2/2 (from cache): the base method alone (P=1) for comparison: iteration 3/10" in render.status_markdown(view, "running")
    view.apply(E.Progress(2, 10, 10, 8.0, "base"))  # the comparison's images are done: its evaluation runs
    assert render.status_markdown(view, "running").endswith(
        "stage 2/2 (from cache): evaluating the base method alone (P=1), then its images trained as long as PDD")
    assert "stage 2/2 (from cache): evaluating (curriculum" in render.status_markdown(render.RunView.of(fake_stream()[:9]), "running")
    grid = render.grid_image(view.images)
    assert grid.size[1] > 10 * 30 and grid.getpixel((grid.size[0] - 5, render.GRID_TOP + 5)) == render.NEW  # newest image framed orange
    later = render.grid_image(view.images, current=3)  # stage 3 running: the shown stages are all frozen
    shown = render.grid_html(E.StageImages(2, view.images.images, view.images.labels, view.images.new,
                                           view.images.classes, np.tile([1, 2], 10)))
    titles = re.findall(r'title="([^"]+)"', shown)
    assert len(titles) == 20 and titles[:3] == ["stage 1 · class 0 · image 1", "stage 2 · class 0 · image 2",
                                                "stage 1 · class 1 · image 1"]
    assert later.getpixel((later.size[0] - 5, render.GRID_TOP + 5)) == render.FROZEN
    fig = render.accuracy_figure(view)
    assert [t.name for t in fig.data] == ["PDD+DM", "DM alone (P=1)", "DM alone, trained as long as PDD",
                                          "random real subset"]
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == pytest.approx([61.0])  # only where computed
    assert list(fig.data[2].x) == [2] and list(fig.data[2].y) == pytest.approx([67.0])  # the fourth marker
    assert list(fig.data[3].y) == pytest.approx([40.0, 55.0])
    assert len(render.loss_figure(view).data) == 2 and max(v for _, v in view.losses[2]) == 0.2  # base loss kept apart
    last = E.StageEvaluated(2, [0.7, 0.7], [0.5, 0.6], 2, [0.6, 0.62], [0.66, 0.68]).summary()
    line = render.final_line(last, "dm")
    assert "PDD+DM 70.0 ± 0.0 %" in line and "DM alone (P=1) 61.0 ± 1.0 %" in line and "random real subset 55.0" in line
    assert "DM alone trained as long 67.0 ± 1.0 %" in line
    assert "PDD is 9.0 points ahead of DM alone (P=1). PDD is 3.0 points ahead of DM alone trained as long." in line
    tie = dict(last, mean=0.605, std=0.01)
    assert "0.5 points behind DM alone (P=1) (within the std: no clear difference)" in render.final_line(tie, "dm")
    assert "Queued" in render.status_markdown(view, "queued", 3) and "position 3" in render.status_markdown(view, "queued", 3)
    quoted = "unknown dataset '![x](https://elsewhere.example/p.png)'"  # engine text quoting a visitor's input
    for view_ in (render.RunView(failed=E.Failed(quoted)), render.RunView(stages=2, current=1, messages=[f"0: {quoted}"])):
        shown = render.status_markdown(view_, "running")
        assert "elsewhere" in shown and "![x](" not in shown and "&#33;&#91;x&#93;&#40;" in shown  # text, never an image
    running = render.RunView.of(fake_stream()[:8])  # stage 2, iteration 10/10
    line = render.status_markdown(running, "running", timing=(12.4, 5.2))
    assert line.endswith("iteration 10/10 · 12 s into this stage, iterations done in about 5 s (its evaluation follows)")
    assert "done · 1 s" in render.progress_html(view)  # stage 1's own time, from StageFinished
    gains = render.gains_html(view)
    assert "<td>1</td><td>1</td><td>55.0 ± 5.0</td><td>–</td><td>–</td><td>40.0 ± 0.0</td><td>+15.0 vs random</td>" in gains
    assert "+15.0 vs random, +9.0 vs DM alone, +3.0 vs same epochs" in gains  # stage 2: 70.0 against 55.0, 61.0, 67.0


def test_a_stream_sends_only_what_changed():
    """Re-sending unchanged figures costs the server and the browser CPU the engine needs."""
    import gradio as gr

    events = fake_stream()
    view = lambda evs: RunView("r", RunState.RUNNING, 0, evs, True)  # noqa: E731
    shown = {}
    first = frame(view(events[:8]), shown=shown)
    assert all(v != gr.skip() for v in first[:5])  # the first frame draws everything
    again = frame(view(events[:8]), shown=shown)
    assert again[0] == first[0] and [v == gr.skip() for v in again[1:]] == [True] * 8
    later = frame(view(events), shown=shown)  # new images and a new evaluation
    assert later[2] != gr.skip() and later[4] != gr.skip() and later[3] == gr.skip()  # loss: not yet due again
    assert frame(view(events))[3] != gr.skip()  # without a stream: everything


def test_a_stream_shows_every_stage_even_one_shorter_than_a_frame():
    """Frames are rate-limited (FRAME_MIN_S): a stage that began and ended between two frames is still shown,
    the stream taking the run one stage at a time until it catches up, its last stage before its end; a
    finished run that a stream meets in its first frame is shown whole."""
    from app.studio import one_stage_on
    evs = [E.RunStarted("run:a", {"method": "dm"}, {}, 3), E.StageStarted(1, 3, False), E.Progress(1, 1, 2, 0.5, "stage"),
           E.StageStarted(2, 3, False), E.Progress(2, 1, 2, 0.4, "stage"), E.StageStarted(3, 3, False)]
    running = RunView("r", RunState.RUNNING, 0, evs, True, (1.0, 2.0))
    first, stage, behind = one_stage_on(running, 0)
    assert (stage, behind) == (1, True) and first.events == evs[:3] and first.timing is None
    assert "stage 1/3" in frame(first)[0]
    second, stage, behind = one_stage_on(running, 1)
    assert (stage, behind) == (2, True) and second.events == evs[:5]
    assert one_stage_on(running, 2) == (running, 3, False)
    assert one_stage_on(running, 3) == (running, 3, False)
    last = E.StageEvaluated(3, [0.5], [0.4], 3).summary()
    done = RunView("r", RunState.DONE, 0, evs + [E.Done("run:a", [last], 1.0)], True)
    assert one_stage_on(done, 0, first=True) == (done, 3, False)  # a finished run opened later: whole
    third, stage, behind = one_stage_on(done, 2)  # followed live: its last stage before its end
    assert (stage, behind) == (3, True) and third.events == evs and third.state is RunState.RUNNING
    assert "stage 3/3" in frame(third)[0] and "Done" in frame(done)[0]
    assert one_stage_on(done, 3) == (done, 3, False)


def test_a_shared_link_shows_progress_and_images_never_files_or_controls():
    last = fake_stream()[-1].summary()
    done = fake_stream() + [E.Exported("/srv/x/run.zip", ["/srv/x/s1.zip"]), E.Done("run:abc", [last], 1.0)]
    mine, theirs = (frame(RunView("r", RunState.DONE, 0, done if owned else done[:-2] + done[-1:], owned))
                    for owned in (True, False))
    assert mine[5] == "/srv/x/run.zip" and mine[6] == ["/srv/x/s1.zip"] and mine[8]["interactive"] is False
    assert theirs[5] is None and theirs[6] is None and theirs[7]["interactive"] is False and theirs[8]["interactive"] is False
    assert "img" in theirs[2]  # the synthetic images are there
    assert "No run with that id on this server" in frame(None, extra="No run with that id on this server.")[0]


def test_identity_is_the_account_when_signed_in_else_the_browsers_token():
    from types import SimpleNamespace
    token = token_for("")
    assert re.fullmatch(r"[0-9a-f]{32}", token) and token_for(token) == token
    assert owner_of(token) == token and owner_of(token, SimpleNamespace(username="ada")) == "hf:ada"
    assert owner_of("hf:ada") == "" and token_for("hf:ada") != "hf:ada"  # a browser cannot claim an account
    assert owner_of("") == "" and owner_of("x" * 20) == ""


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    service = Service(tmp / "cache", tmp / "exports", tmp / "uploads", threads=1)
    yield Studio(service)
    service.shutdown()


def test_controls_are_the_schemas_settings_and_the_page_sends_them_by_name(studio):
    """Every shown setting comes from the service's schema (labels, hints, bounds); "6,4" in the page's field
    becomes the schedule; a schedule that does not add up is refused on the validation line with the fix."""
    names = [f["name"] for f in studio.fields]
    assert {"stage_ipc", "iterations", "compare_epochs", "syn_steps", "idc_factor"} <= set(names)
    token = token_for("")
    controls = studio.control_values()
    controls[6 + names.index("stage_ipc")] = "6,4"
    settings = studio.settings_of(token, *controls)
    assert settings["stage_ipc"] == "6,4" and settings["stages"] == 2 and "syn_steps" not in settings
    controls[6 + names.index("stage_ipc")] = "6, 5"
    valid, _, run_button, *_ = studio.check(None, token, *controls)
    valid = html.unescape(valid)  # as the page shows it: outside text arrives as character references
    assert "pdd-error" in valid and "adds up to 11" in valid and "Fix: set IPC to 11" in valid
    assert run_button["interactive"] is False
    controls[6 + names.index("stage_ipc")] = ""
    assert studio.settings_of(token, *controls)["stage_ipc"] is None
    assert "executor" not in names and "max_memory_gb" not in names  # the server's settings, not a visitor's
    controls[6 + names.index("iterations")] = "nan"
    assert "Iterations per stage must be a whole number" in html.unescape(studio.check(None, token, *controls)[0])
    controls[6 + names.index("iterations")] = 200
    at = 6 + names.index("dsa_strategy")  # a required text setting: its default in a text box, sent as typed
    assert controls[at] == "auto"
    controls[at] = "color_crop_scale_rotate"
    assert studio.settings_of(token, *controls)["dsa_strategy"] == "color_crop_scale_rotate"
    for emptied in ("", None, " "):  # an emptied text box is refused, not quietly the preset's augmentation
        controls[at] = emptied
        assert "Augmentation is empty" in html.unescape(studio.check(None, token, *controls)[0])
    controls[at] = "color_<img src=x onerror=alert(1)>"  # a message quotes what was typed: as text, never markup
    shown = studio.check(None, token, *controls)[0]
    assert "<img" not in shown and "<img src=x onerror=alert" in html.unescape(shown)  # shown as these characters


def test_an_uploaded_dataset_is_the_uploaders_alone(studio, tmp_path):
    from tests.test_service import upload
    a, b = token_for(""), token_for("")
    z = upload(tmp_path)
    controls = studio.control_values()
    controls[0], controls[1] = "upload your own (.zip)", str(z)
    image, facts = studio.preview(None, a, controls[0], str(z))
    assert image is not None and "3 classes" in facts and str(tmp_path) not in facts
    kept = studio.kept[(a, str(z))]
    b_controls = list(controls)
    for named in (kept, kept.removeprefix("folder:")):  # B names A's kept file outright
        b_controls[0], b_controls[1] = named, None
        refused = studio.check(None, b, *b_controls)[0]
        assert "pdd-error" in refused and str(studio.service.upload_dir) not in refused, refused
    assert "not one of your uploads" in studio.check(None, b, kept, None, *controls[2:])[0]


def test_a_broken_upload_is_named_alike_by_the_data_panel_and_the_validation_line(studio, tmp_path):
    """The data panel and the validation line read one answer: a broken upload disables Run with the reason
    the panel shows, where the line once said valid."""
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("cats/0.png", b"not an image")
        z.writestr("dogs/0.png", b"not an image either")
    token = token_for("")
    controls = studio.control_values()
    controls[0], controls[1] = "upload your own (.zip)", str(broken)
    image, facts = studio.preview(None, token, controls[0], str(broken))
    valid, _, run = studio.check(None, token, *controls)[:3]
    assert image is None and "pdd-error" in facts and "Fix" in html.unescape(facts)
    assert "broken.zip" in html.unescape(facts)  # the name the visitor gave it, not the server's
    assert valid == facts and "valid" not in html.unescape(valid) and run["interactive"] is False


def test_the_data_panel_reads_an_upload_at_the_image_size_in_advanced(studio, tmp_path):
    """Mixed sizes need Image size; once it is set, the panel shows the upload at that size and the line
    says valid (both once read every upload at its own size, and refused it whatever Image size said)."""
    from tests.test_service import sized_zip
    z = sized_zip(tmp_path / "mixed.zip", [16, 24])
    token = token_for("")
    controls = studio.control_values()
    controls[0], controls[1] = "upload your own (.zip)", str(z)
    at = 6 + [f["name"] for f in studio.fields].index("image_size")
    image, facts = studio.preview(None, token, controls[0], str(z), controls[at])
    assert image is None and "mixed sizes" in html.unescape(facts) and "Image size" in html.unescape(facts)
    assert "mixed sizes" in html.unescape(studio.check(None, token, *controls)[0])
    controls[at] = "16"
    image, facts = studio.preview(None, token, controls[0], str(z), controls[at])
    assert image is not None and "16" in facts and "pdd-error" not in facts
    assert "✓ valid" in studio.check(None, token, *controls)[0]
    image, facts = studio.preview(None, token, controls[0], str(z), "sixteen")  # the line names a bad box
    assert image is None and "mixed sizes" in html.unescape(facts)


def test_the_same_file_uploaded_again_after_a_prune_is_kept_again(studio, tmp_path):
    """The web framework stores an upload at a path named by its content: the same file uploaded again
    after the housekeeping pruned the kept copy arrives at the same path, and must be kept again."""
    from tests.test_service import upload
    token = token_for("")
    z = upload(tmp_path)
    controls = studio.control_values()
    controls[0], controls[1] = "upload your own (.zip)", str(z)
    again = z.read_bytes()
    assert "✓ valid" in studio.check(None, token, *controls)[0]
    kept = studio.kept[(owner_of(token), str(z))]
    Path(kept.removeprefix("folder:")).unlink()  # pruned
    assert "no longer on this server" in studio.check(None, token, *controls)[0]
    z.write_bytes(again)  # uploaded again, to the same path
    assert "✓ valid" in studio.check(None, token, *controls)[0]


def test_a_long_read_keeps_the_panel_waiting_until_its_images_come(studio, tmp_path, monkeypatch):
    """A read past the panel's wait is asked again (the page once stayed on "Reading…" with Run off, and
    nothing ever asked again)."""
    from tests.test_service import upload
    real, calls = studio.service.preview, []

    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError
        return real(*args, **kwargs)
    monkeypatch.setattr(studio.service, "preview", slow)
    z = upload(tmp_path)
    image, facts = studio.preview(None, token_for(""), "upload your own (.zip)", str(z))
    assert len(calls) == 3 and image is not None and "3 classes" in facts


def test_a_remembered_preview_keeps_only_what_the_panel_shows(studio, tmp_path):
    """The web process remembers previews (one per dataset and image size): an upload of many classes of
    large images once kept megabytes of pixels per answer that no panel shows."""
    from pdd_engine.worker import SHOWN_CLASSES, SHOWN_PX
    from tests.test_service import sized_zip
    names = [f"c{i:02d}" for i in range(SHOWN_CLASSES + 10)]
    z = sized_zip(tmp_path / "many.zip", [64], classes=names, per_class=2)
    token = token_for("")
    ref = studio.dataset_of(owner_of(token), "upload your own (.zip)", str(z))
    p = studio.service.preview(ref, owner_of(token), timeout=120)
    assert p["num_classes"] == SHOWN_CLASSES + 10 and p["size"] == 64  # the facts are the data's
    assert p["images"].shape[1:3] == (SHOWN_PX, SHOWN_PX) and p["labels"].max() == SHOWN_CLASSES - 1
    image, facts = studio.preview(None, token, "upload your own (.zip)", str(z))
    assert image is not None and f"{SHOWN_CLASSES + 10} classes" in facts and "64×64" in facts


def test_an_upload_checked_and_previewed_at_once_is_kept_once(studio, tmp_path, monkeypatch):
    """The page checks the settings and previews the data in two handlers at once on every upload; both ask for
    the upload's dataset value. One keeps (moves) the file and the other gets what it kept, not "the upload
    could not be kept" for a good upload (seen in the browser test under load; the service keeps it once,
    test_service's test of two visitors)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_service import sized_zip
    z = sized_zip(tmp_path / "pets.zip", [8], per_class=2)
    keep, calls = studio.service.keep_upload, []

    def slow_keep(path, owner):  # both handlers past the "is it kept?" check before either moves the file
        calls.append(path)
        time.sleep(0.3)
        return keep(path, owner)
    monkeypatch.setattr(studio.service, "keep_upload", slow_keep)
    owner = owner_of(token_for(""))
    with ThreadPoolExecutor(2) as pool:
        refs = list(pool.map(lambda _: studio.dataset_of(owner, "upload your own (.zip)", str(z)), range(2)))
    assert refs[0] == refs[1] and refs[0].startswith("folder:") and not z.exists()


def test_an_api_start_message_is_one_printable_line(studio, tmp_path):
    """/start's refusal can quote an upload's class names: it comes back as one printable line."""
    from tests.test_untrusted import image_bytes
    z = tmp_path / "names.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("evil\n\x1b[31mFAKE: valid\x1b[0m\r\u202egnp/0.png", image_bytes(8, "L", "PNG"))
        for i in range(2):
            f.writestr(f"fine/{i}.png", image_bytes(8, "L", "PNG"))
    token = token_for("")
    ref = studio.service.keep_upload(str(z), owner_of(token))
    run_id, _, message = studio.start(token, {**TINY, "dataset": ref})
    assert not run_id and "has 1 image" in message and "FAKE: valid" in message
    assert not any(c in message for c in "\n\r\x1b\u202e"), repr(message)


# -- the real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as url:
        yield url


def follow(client, run_id, token):
    job = client.submit(run_id, token, api_name="/follow")
    updates = [out[0] for out in job]
    return updates, job.outputs()[-1]


@pytest.mark.slow
def test_client_run_streams_each_stage_then_caches_and_downloads(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    run_id, token, msg = c.predict("", TINY, api_name="/start")
    assert run_id and msg == ""
    updates, final = follow(c, run_id, token)
    for stage in (1, 2):
        assert any(f"stage {stage}/2" in u for u in updates), updates
    assert final[0].startswith("**Done**") and "computed stage(s) [1, 2]" in final[0]
    bundle = load_bundle(final[5])
    assert len(bundle.manifest["stage_entries"]) == 2 and len(final[6]) == 2
    assert "stage_1/images.pt" in zipfile.ZipFile(final[6][0]).namelist()
    again, _, _ = c.predict(token, TINY, api_name="/start")  # the same settings: served from the cache
    assert "all stages served from the cache" in follow(c, again, token)[1][0]
    rows = c.predict(token, api_name="/runs")[0]
    assert any(r[1] == "digits" and r[2] == "dm" for r in rows["data"])
    names = {s["name"] for s in c.predict(api_name="/settings")}
    assert {"iterations", "compare_epochs", "syn_steps"} <= names


@pytest.mark.slow
def test_client_stop_keeps_finished_stages_and_resume_continues(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    run_id, token, _ = c.predict("", {**TINY, "stages": 3, "ipc": 3, "iterations": 400}, api_name="/start")
    stream = c.submit(run_id, token, api_name="/follow")
    for out in stream:
        if "stage 2/3: iteration" in out[0]:
            break
    assert "Stopping" in c.predict(run_id, token, api_name="/stop")
    while not stream.done():
        time.sleep(0.2)
    assert stream.outputs()[-1][0].startswith("**Stopped**")
    new_id, _, _ = c.predict(run_id, token, api_name="/resume")
    assert "computed stage(s) [2, 3]" in follow(c, new_id, token)[1][0]  # stage 1 came from the cache


@pytest.mark.slow
def test_invalid_input_is_a_message_not_a_trace(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    for settings, words in (({**TINY, "ipc": 3}, "not divisible"), ({**TINY, "iterations": "many"}, "iterations must be"),
                            ({**TINY, "eval_lr": "nan"}, "eval_lr must be"), ({"warp": 3}, "unknown config field"),
                            ("not a dict", "one JSON object"), ({**TINY, "eval_epochs": 10 ** 4}, "PDD_MAX_EVAL_EPOCHS")):
        run_id, _, msg = c.predict("", settings, api_name="/start")
        msg = html.unescape(msg)
        assert run_id == "" and words in msg and "Fix:" in msg and "Traceback" not in msg, msg
    assert "No run with that id" in follow(c, "does-not-exist", "")[0][-1]


# what a stranger sends for each parameter of an endpoint; the identifying ones carry the first visitor's ids
STRANGER_ARGS = {"owner": "TOKEN", "token": "TOKEN", "settings": {}, "dataset": "digits", "upload": None, "data": None,
                 "archs": ["same as exported"], "models": 1, "epochs": "1", "image_size": ""}
IDENTIFYING = {"run_id": "RUN_ID", "keys": "KEYS", "run_key": "RUN_KEY"}


@pytest.mark.slow
def test_every_endpoint_refuses_a_stranger_with_another_visitors_ids(tmp_path):
    """Every public API endpoint, from the app's own API description: those that take a run id or run key,
    called by a second client with the first client's, give no files, no rows and no control of the run. A
    new endpoint with a parameter this test does not know fails it."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with running_app(tmp_path) as url:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        run_id, token_a, _ = a.predict("", TINY, api_name="/start")
        _, final = follow(a, run_id, token_a)
        bundle_name = Path(final[5]).name
        key = a.predict(token_a, api_name="/runs")[1]["choices"][0][1]
        token_b = b.predict("", {"stages": 1, "ipc": 1, "iterations": 2, "eval_epochs": 1, "eval_models": 1},
                            api_name="/start")[1]
        values = {"TOKEN": token_b, "RUN_ID": run_id, "KEYS": [key], "RUN_KEY": key}
        endpoints = b.view_api(return_format="dict", print_info=False)["named_endpoints"]
        tried = []
        for name, ep in sorted(endpoints.items()):
            params = [p["parameter_name"] for p in ep["parameters"]]
            unknown = set(params) - set(STRANGER_ARGS) - set(IDENTIFYING)
            assert not unknown, f"{name} takes {unknown}: say here what a stranger sends for it"
            if not set(params) & set(IDENTIFYING):
                continue
            args = [values[IDENTIFYING[p]] if p in IDENTIFYING else values.get(STRANGER_ARGS[p], STRANGER_ARGS[p])
                    if isinstance(STRANGER_ARGS[p], str) else STRANGER_ARGS[p] for p in params]
            tried.append(name)
            try:  # the page may refuse first (a run key it never offered B is not one of B's choices)
                out = json.dumps([str(o) for o in (b.predict(*args, api_name=name) if name != "/follow"
                                                   else follow(b, run_id, token_b)[1])])
            except AppError as e:  # refused before the handler: the message only echoes what B sent
                assert bundle_name not in str(e) and "not in the list of choices" in str(e), (name, e)
                continue
            assert bundle_name not in out and "stage1.zip" not in out, (name, out)  # no files
            assert key[4:16] not in out or name == "/follow", (name, out)  # no rows naming A's run
        assert sorted(tried) == ["/delete", "/download", "/evaluate_bundle", "/follow", "/resume", "/stop"], tried
        _, b_view = follow(b, run_id, token_b)
        assert b_view[0].startswith("**Done**") and b_view[5] is None  # progress yes, files no
        assert a.predict(token_a, api_name="/runs")[0]["data"]  # A's run is still A's
        assert "another visitor" in b.predict(run_id, token_b, api_name="/stop")


@pytest.mark.slow
def test_client_previews_datasets_and_evaluates_a_bundle_on_two_architectures(app_url, tmp_path, tiny, store):
    """The named API endpoints preview_dataset and evaluate_bundle; bad bundles are one-line messages."""
    from gradio_client import Client, handle_file

    from pdd_engine import distill
    from pdd_engine.export import export_bundle
    from pdd_engine.manifest import manifest_arch

    c = Client(app_url, verbose=False)
    image, facts = c.predict("", "digits", None, api_name="/preview_dataset")
    assert "10 classes" in facts and "1,438 train / 359 test" in facts and Path(image).stat().st_size > 1000
    image, facts = c.predict("", "cifar10", None, api_name="/preview_dataset")
    assert image is None and "not on this machine" in facts  # facts without a download
    cfg = tiny(stages=2, ipc=2)
    distill(cfg, store)
    bundle = export_bundle(cfg, tmp_path / "run.zip", store)
    msg, table, _ = c.predict(handle_file(str(bundle)), "", ["same as exported", "convnet-w16"], 1, "2", None, "",
                              api_name="/evaluate_bundle")
    assert msg.startswith("✓ Evaluated on 2 architecture(s)"), msg
    arch = manifest_arch(load_bundle(bundle).manifest)
    assert [r[0] for r in table["data"]] == [f"recorded in the bundle ({arch})", "same as exported", "convnet-w16"]
    assert table["headers"] == ["architecture", "stage 1 (IPC 1)", "stage 2 (IPC 2)"]
    notzip = tmp_path / "notes.zip"
    notzip.write_text("hello")
    tampered = tampered_copy(bundle, tmp_path / "tampered.zip")  # its manifest's shape is checked before use
    for bad, words in ((notzip, "not a zip file"), (tampered, "malformed")):
        msg, _, _ = c.predict(handle_file(str(bad)), "", ["convnet"], 1, "1", None, "", api_name="/evaluate_bundle")
        msg = html.unescape(msg)
        assert words in msg and "Fix:" in msg and "Traceback" not in msg and msg.count("<br>") == 0, msg
    msg, _, _ = c.predict(handle_file(str(bundle)), "", ["vit"], 1, "1", None, "", api_name="/evaluate_bundle")
    assert "unknown architecture 'vit'" in html.unescape(msg)


def test_the_results_tab_shows_a_row_and_its_button_fills_the_distil_tab(studio, tmp_path, monkeypatch):
    """A benchmark row (bench/results/quality.csv's format): its comparisons in the table, its per-stage curve,
    and its settings on the Distil tab's controls."""
    from pdd_engine.results import COLUMNS, append_row
    row = {c: "" for c in COLUMNS}
    row.update(dataset="mnist", method="mtt", stages="2", ipc="10", protocol="paper", width="32", max_train="10000",
               iterations="200", eval_epochs="300", eval_models="3", precision="float32", eval_precision="float32",
               augmentation="color_crop_cutout_scale_rotate", seeds="0 1 2", extra='{"lr_img": 0.5}', mean="95.10", std="0.30", random_mean="93.00", random_std="0.40",
               base_mean="94.00", base_std="0.20", base_epochs_mean="94.50", base_epochs_std="0.20", stage_ipc="5;10",
               stage_mean="92.00;95.10", stage_std="0.5;0.3", stage_random="90.00;93.00", wall_s="600")
    append_row(tmp_path / "quality.csv", COLUMNS, {**row, "mean": "90.00"})  # an older measurement of the setting
    append_row(tmp_path / "quality.csv", COLUMNS, row)  # the newest is the one shown, once
    monkeypatch.setattr(studio.service, "results_csv", tmp_path / "quality.csv")
    rows, pick, empty = studio.results_table()
    assert rows == [["mnist", "10", "PDD+MTT", 2, "paper", "pool 10,000, w32, no flip, lr_img 0.5", "95.1 ± 0.3", "94.0 ± 0.2", "+1.1 ✓", "94.5 ± 0.2",
                     "+0.6 ✓", "93.0 ± 0.4", "+2.1 ✓", 3, "600"]] and empty == ""
    assert studio.results_table("digits")[0] == [] and "No benchmark rows match" in studio.results_table("digits")[2]
    # rows read side by side (P = 1 before its PDD rows), and the picker opens on the clearest gain, not the first row
    p1 = {**row, "stages": "1", "mean": "94.00", "std": "0.20", "stage_ipc": "10", "stage_mean": "94.00", "stage_std": "0.2",
          "stage_random": "93.00"}
    append_row(tmp_path / "quality.csv", COLUMNS, {**row, "stages": "5", "mean": "93.00"})  # behind its P = 1
    append_row(tmp_path / "quality.csv", COLUMNS, p1)
    table, picked, _ = studio.results_table()
    assert [(r[2], r[3]) for r in table] == [("MTT", 1), ("PDD+MTT", 2), ("PDD+MTT", 5)]
    assert picked["value"] == "1" and table[1][6] == "95.1 ± 0.3"
    fig = studio.result_curve(picked["value"])
    assert [t.name for t in fig.data] == ["PDD+MTT", "MTT alone (P=1)", "MTT alone, trained as long", "random real subset"]
    assert list(fig.data[0].y) == [92.0, 95.1] and list(fig.data[3].x) == [5, 10]
    filled = studio.use_result(picked["value"])
    names = [f["name"] for f in studio.fields]
    assert filled[:4] == ["mnist", "mtt", 2, 10] and filled[-1].selected == "distil"
    adv = filled[4:-1]
    assert adv[names.index("max_train")] == "10000" and adv[names.index("iterations")] == 200
    assert adv[names.index("eval_precision")] == "float32"
    assert adv[names.index("dsa_strategy")] == "color_crop_cutout_scale_rotate" and adv[names.index("lr_img")] == "0.5"


def test_after_the_default_run_the_studio_points_to_the_showcase(studio):
    """The default run's own numbers rarely show what PDD adds: when it is done the status names the
    showcase preset (which the Preset menu offers) and the Results tab; any other run, or an unfinished
    default run, gets no such line."""
    default = studio.preset_settings("cpu-quick")
    run = lambda cfg, state=RunState.DONE: RunView("r", state, 0, [E.RunStarted("run:a", cfg, {}, 2)], True)  # noqa: E731
    hint = studio.next_step(run(default))
    assert "cpu-showcase" in hint and "Results" in hint and "cpu-showcase" in studio.presets
    assert "on mnist (a longer run" in hint  # the showcase is on another dataset than the default run: the hint says so
    assert studio.next_step(run(default, RunState.RUNNING)) == ""
    assert studio.next_step(run({**default, "method": "idc"})) == ""
    assert studio.next_step(run({**default, "iterations": 50})) == ""


def test_text_from_a_shared_bundle_is_shown_as_text_not_markup():
    """A bundle's manifest is someone else's text: in a Markdown output it must not become an image that loads
    from another site, a link, or markup."""
    from app.render import plain
    shown = plain("folder:/x/![t](https://evil.example/p.png)<img src=x onerror=alert(1)>.zip")
    assert "<img" not in shown and "![" not in shown and "](" not in shown and "evil" in shown
    # no bare link, heading, code block, formula or line of its own; nothing the page's JSON stream cannot carry
    shown = plain("go http://2130706433/login\nok\n===\n\n    code\n\n$$a^2_b$$ x\ud800y\x1b[2J\u202e")
    assert "://" not in shown and "\n" not in shown and "$$" not in shown and "^" not in shown
    assert shown.encode("utf-8") and "\x1b" not in shown and "\u202e" not in shown
    assert html.unescape(shown) == "go http://2130706433/login ok === code $$a^2_b$$ x y [2J"
    from app.studio import error_html  # an error can quote a bundle's fields: the same literal line, bounded
    from pdd_engine.errors import BundleError
    shown = error_html(BundleError("evaluation.family is '[Verify](https:evil.example) ![](http:evil.example/p.png)"
                                   "\ud800\n\n# BIG' " + "x" * 10 ** 5, "give a bundle"))
    assert "](" not in shown and "\n" not in shown and shown.encode("utf-8") and len(shown) < 3 * render.PLAIN_CHARS
    classes = ["c" * 60_000, "d"]  # a class folder's name: bounded in each image's hover title
    grid = render.grid_html(E.StageImages(1, np.zeros((2, 8, 8, 1), np.uint8), np.arange(2), np.ones(2, bool), classes))
    assert len(grid) < 20_000


def test_a_bundles_warnings_are_shown_when_it_is_picked_for_evaluation(studio, monkeypatch):
    """Whoever evaluates a shared bundle learns what its run warned of (an unstable MTT matching), per stage, as
    text (the manifest is someone else's), cut to a bounded length; entries that are not text are ignored."""
    from pdd_engine.manifest import WARNING_CHARS
    entry = {"stage": 1, "cumulative_images_per_class": 5}
    manifest = {"config": {}, "method": "mtt", "dataset": {"name": "mnist"}, "stages": 3, "ipc": 15,  # config: unread
                "evaluation": {"models": 3, "epochs": 300, "family": "convnet", "depth": 3, "width": 32},
                "stage_entries": [{**entry, "matching_warning": "warning: the trajectory matching was unstable "
                                   "[x](https://evil.example) " + "y" * 2000},
                                  {**entry, "stage": 2, "matching_warning": None},
                                  {**entry, "stage": 3, "matching_warning": {"not": "text"}}]}
    monkeypatch.setattr(studio.service, "manifest", lambda path: manifest)
    monkeypatch.setattr(studio, "bundle", lambda upload, run_key, owner: ("b.zip", None))
    line, _ = studio.inspect_bundle(None, "b.zip", "", token_for(""))
    assert "](" not in line
    line = html.unescape(line)  # as the page reads it
    assert line.startswith("✓ MTT on mnist: 3 stage(s)") and line.count("**Warning** — stage 1: the trajectory") == 1
    assert "stage 2" not in line and "stage 3" not in line
    assert line.count("y") < WARNING_CHARS + 20
    manifest["stage_entries"] = [entry]  # a bundle from before the field
    assert "Warning" not in studio.inspect_bundle(None, "b.zip", "", token_for(""))[0]
