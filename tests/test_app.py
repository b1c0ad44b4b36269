"""The web app: rendering, the job manager, and the real server driven by gradio_client."""

import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app import render
from app.jobs import JobManager
from app.ui import control_values
from pdd_engine import DistillConfig
from pdd_engine import events as E
from pdd_engine.export import load_bundle
from tests.apphelpers import running_app, tampered_copy

# every control of the page, in the order the /start API takes them
TINY = DistillConfig.make(dict(stages=2, ipc=2, iterations=15, width=16, eval_epochs=20, eval_models=2,
                               transition_epochs=5, device="cpu"))
TINY_CONTROLS = control_values(TINY)


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


def test_run_view_folds_events_and_renders():
    view = render.RunView.of(fake_stream())
    assert view.stages == 2 and view.cached_stages == {2} and sorted(view.evals) == [1, 2]
    assert 0.5 <= view.fraction < 1
    assert "stage 2/2 (from cache): evaluating" in render.status_markdown(view, "running")
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
    running = render.RunView.of(fake_stream()[:8])  # stage 2, iteration 10/10
    line = render.status_markdown(running, "running", timing=(12.4, 5.2))
    assert line.endswith("iteration 10/10 · 12 s into this stage, iterations done in about 5 s (its evaluation follows)")
    assert "done · 1 s" in render.progress_html(view)  # stage 1's own time, from StageFinished
    gains = render.gains_html(view)
    assert "<td>1</td><td>1</td><td>55.0 ± 5.0</td><td>–</td><td>–</td><td>40.0 ± 0.0</td><td>+15.0 vs random</td>" in gains
    assert "+15.0 vs random, +9.0 vs DM alone, +3.0 vs same epochs" in gains  # stage 2: 70.0 against 55.0, 61.0, 67.0


def test_job_times_each_stage_and_what_its_iterations_still_need():
    from app.jobs import Job

    job = Job("j", TINY, "me")
    job.add(E.StageStarted(1, 2, False))
    job.add(E.Progress(1, 1, 10, 0.5))  # the first iteration: setup (experts, warm-up) is not counted
    time.sleep(0.3)
    job.add(E.Progress(1, 3, 10, 0.4))
    since, left = job.timing(1, "stage", 3, 10)
    assert since >= 0.3 and 0.3 / 2 * 7 <= left < 3  # 0.15 s per iteration, 7 to go
    assert job.timing(1, "base", 0, 10)[1] is None  # a phase not begun: no guess


def wait(job, timeout=120):
    t = time.time()
    while not job.finished and time.time() - t < timeout:
        time.sleep(0.2)
    return job


@pytest.mark.slow
def test_worker_writes_the_bundle_before_done_and_the_manager_exports_cached_runs(tmp_path, tiny):
    from pathlib import Path
    m = JobManager(str(tmp_path / "cache"), threads=1, export_dir=str(tmp_path / "ex"))
    try:
        job = wait(m.submit(tiny(stages=2, ipc=2), "me"))
        assert job.state == "done", job.events[-1]
        exported = [e for e in job.events if isinstance(e, E.Exported)]
        assert len(exported) == 1 and isinstance(job.events[job.events.index(exported[0]) + 1], E.Done)
        assert Path(exported[0].path).exists() and len(exported[0].stage_paths) == 2
        Path(exported[0].path).unlink()
        again = m.export(job.events[-1].run_key, "me")  # a helper process, not the caller, writes it
        assert again.path == exported[0].path and Path(again.path).exists() and again.error == ""
        missing = m.export("run:0000")
        assert missing.path is None and "no run matches" in missing.error
    finally:
        m.shutdown()


@pytest.mark.slow
def test_control_changes_never_time_networks_in_the_server(tmp_path, monkeypatch):
    import pdd_engine.estimate
    from app.ui import Studio
    from pdd_engine.cache import Store
    from pdd_engine.estimate import cost_key

    def in_server(*a):
        raise AssertionError("timed a network in the server process")
    monkeypatch.setattr(pdd_engine.estimate, "pass_cost", in_server)
    m = JobManager(str(tmp_path / "cache"))
    try:
        studio = Studio(m, Store(tmp_path / "cache"), tmp_path / "ex")
        d = DistillConfig()
        controls = studio.control_values(d)
        m.pass_cost(*cost_key(d))  # what app.py starts at launch
        valid, est, *_ = studio.check(*controls)
        assert valid.startswith("✓ valid") and "Estimate on this machine: **about" in est
        assert len(m._costs) == 1  # measured once, in the helper process
        m.helper().submit(time.sleep, 5)  # the helper is busy: a new shape's timing must not hold the answer
        controls = studio.control_values(d.replace(width=48))
        valid, est, *_ = studio.check(*controls)
        assert valid.startswith("✓ valid") and "timing this network" in est
    finally:
        m.shutdown()


@pytest.mark.slow
def test_engine_and_helper_exit_when_the_server_is_killed(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-c", f"""
import time
from app.jobs import JobManager
from app.ui import control_values
from pdd_engine import DistillConfig
m = JobManager({str(tmp_path / "c")!r}, threads=1)
job = m.submit(DistillConfig(iterations=100000), "me")
m.helper().submit(time.sleep, 0).result()
while job.process is None or not job.events:
    time.sleep(0.1)
print(job.process.pid, *m.helper()._processes, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, cwd=root)
    children = [int(p) for p in server.stdout.readline().split()]
    assert len(children) == 2
    server.kill()  # kill -9: no atexit, no finally
    server.wait()

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False
    deadline = time.time() + 30
    while any(alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children)


@pytest.mark.slow
def test_a_failed_engine_start_fails_one_job_and_the_next_runs(tmp_path, tiny):
    m = JobManager(str(tmp_path / "cache"), threads=1)
    real = m.ctx.Process
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real(*a, **k)
    m.ctx.Process = flaky
    try:
        first = wait(m.submit(tiny(stages=1, ipc=1), "me"))
        assert first.state == "failed" and "could not start (OSError" in first.events[-1].message
        assert "Fix: wait for other runs to finish" in first.events[-1].message
        second = wait(m.submit(tiny(stages=1, ipc=1), "me"))
        assert second.state == "done", second.events[-1]
        deadline = time.time() + 10
        while (second.queue is not None or second.process is not None) and time.time() < deadline:
            time.sleep(0.1)
        assert second.queue is None and second.process is None and second.events  # handles released, events kept
    finally:
        m.shutdown()


@pytest.mark.slow
def test_job_manager_queues_stops_and_survives_a_dead_engine(tmp_path):
    m = JobManager(str(tmp_path / "cache"), max_concurrent=1, threads=1)
    slow = DistillConfig.make(dict(stages=2, ipc=2, iterations=5000, eval_epochs=5, eval_models=1, dm_pool=1))
    a = m.submit(slow, owner="alice")
    b = m.submit(slow.replace(seed=1), owner="bob")
    assert m.position(b.id) == 1 and b.state == "queued"
    assert "another browser" in m.stop(a.id, owner="mallory") and a.state in ("queued", "running")
    while not any(isinstance(e, E.Progress) for e in a.events):
        time.sleep(0.2)
    assert "Stopping" in m.stop(a.id, owner="alice")
    assert wait(a).state == "stopped"
    while b.state != "running":
        time.sleep(0.1)
    b.process.kill()  # an engine crash: the manager reports it and keeps serving
    assert wait(b).state == "failed" and "exited unexpectedly" in b.events[-1].message
    c = m.submit(DistillConfig.make(dict(stages=1, ipc=1, iterations=3, eval_epochs=3, eval_models=1, dm_pool=1)), owner="carol")
    assert wait(c).state == "done"
    m.shutdown()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as url:
        yield url


def follow(client, job_id):
    job = client.submit(job_id, api_name="/follow")
    updates = [out[0] for out in job]
    return updates, job.outputs()[-1]


@pytest.mark.slow
def test_client_run_streams_each_stage_then_caches_and_downloads(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    job_id, owner, msg = c.predict("", *TINY_CONTROLS, api_name="/start")
    assert job_id and msg == ""
    updates, final = follow(c, job_id)
    for stage in (1, 2):
        assert any(f"stage {stage}/2" in u for u in updates), updates
    assert final[0].startswith("**Done**") and "computed stage(s) [1, 2]" in final[0]
    bundle = load_bundle(final[5])
    assert len(bundle.manifest["stage_entries"]) == 2 and len(final[6]) == 2
    assert "stage_1/images.pt" in zipfile.ZipFile(final[6][0]).namelist()
    # the same config again: served from the cache, no stage computed
    job2, _, _ = c.predict(owner, *TINY_CONTROLS, api_name="/start")
    _, final2 = follow(c, job2)
    assert "all stages served from the cache" in final2[0]
    rows = c.predict(owner, api_name="/runs")[0]
    assert any(r[1] == "digits" and r[2] == "dm" for r in rows["data"])


@pytest.mark.slow
def test_client_stop_keeps_finished_stages_and_resume_continues(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    controls = control_values(TINY.replace(stages=3, ipc=3, iterations=400))
    job_id, owner, _ = c.predict("", *controls, api_name="/start")
    stream = c.submit(job_id, api_name="/follow")
    for out in stream:
        if "stage 2/3: iteration" in out[0]:
            break
    assert "Stopping" in c.predict(job_id, owner, api_name="/stop")
    while not stream.done():
        time.sleep(0.2)
    assert stream.outputs()[-1][0].startswith("**Stopped**")
    new_id, _, _ = c.predict(job_id, owner, api_name="/resume")
    _, final = follow(c, new_id)
    assert "computed stage(s) [2, 3]" in final[0]  # stage 1 came from the cache


@pytest.mark.slow
def test_invalid_input_is_a_message_not_a_trace(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    bad = list(TINY_CONTROLS)
    bad[4] = 3  # IPC 3 with P = 2
    job_id, _, msg = c.predict("", *bad, api_name="/start")
    assert job_id == "" and "not divisible" in msg and "Fix:" in msg and "Traceback" not in msg
    bad = list(TINY_CONTROLS)
    bad[0] = "upload your own (.zip)"
    assert "no dataset file was uploaded" in c.predict("", *bad, api_name="/start")[2]
    updates, _ = follow(c, "does-not-exist")
    assert "No run with that id" in updates[-1]


@pytest.mark.slow
def test_stagewise_jobs_match_a_normal_run_one_call_per_stage(tmp_path, monkeypatch):
    """The ZeroGPU path: one (fake) spaces.GPU call per stage, same results as the worker process."""
    import sys
    import types

    from app import jobs
    from pdd_engine import distill
    from pdd_engine.cache import Store

    calls = []
    fake = types.SimpleNamespace(GPU=lambda duration: (lambda fn: (lambda *a: calls.append(a[2]) or fn(*a))))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    cfg = DistillConfig.make(dict(stages=3, ipc=3, iterations=4, eval_epochs=4, eval_models=2, dm_pool=1))
    m = JobManager(str(tmp_path / "a"), stage_fn=jobs.zerogpu_stage_fn(), export_dir=str(tmp_path / "ex"))
    job = wait(m.submit(cfg, "me"))
    assert job.state == "done" and calls == [1, 2, 3]
    view = render.RunView.of(job.events)
    assert view.exported.path and load_bundle(view.exported.path).manifest["stages"] == 3
    assert view.stages == 3 and sorted(view.evals) == [1, 2, 3] and sorted(view.losses) == [1, 2, 3]
    reference = distill(cfg, Store(tmp_path / "b"))
    assert view.done.accuracies == reference.accuracies


@pytest.mark.slow
def test_stagewise_jobs_with_the_real_spaces_package(tmp_path, monkeypatch):
    """The real ``spaces`` package (installed by the test command): outside a Space its GPU decorator
    hands back the function itself, and the stage-per-call path gives the normal run's results.
    (The stand-in above is kept for what this cannot show: one decorated call per stage.)"""
    import spaces  # noqa: F401 - the real one: the test command installs it

    from app import jobs
    from pdd_engine import distill
    from pdd_engine.cache import Store

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setenv("PDD_STAGEWISE", "1")
    fn = jobs.zerogpu_stage_fn()
    assert fn is jobs.stage_call
    cfg = DistillConfig.make(dict(stages=2, ipc=2, iterations=4, eval_epochs=4, eval_models=2, dm_pool=1))
    m = JobManager(str(tmp_path / "a"), stage_fn=fn)
    job = wait(m.submit(cfg, "me"))
    assert job.state == "done", job.events[-1]
    assert render.RunView.of(job.events).done.accuracies == distill(cfg, Store(tmp_path / "b")).accuracies
    m.shutdown()


@pytest.mark.slow
def test_hostile_upload_is_refused_with_the_reason(app_url, tmp_path):
    from gradio_client import Client, handle_file

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("a/0.png", b"x")
        z.writestr("../../../etc/escaped.png", b"x")
    c = Client(app_url, verbose=False)
    controls = list(TINY_CONTROLS)
    controls[0], controls[1] = "upload your own (.zip)", handle_file(str(evil))
    job_id, _, msg = c.predict("", *controls, api_name="/start")
    assert job_id and msg == ""
    _, final = follow(c, job_id)
    assert final[0].startswith("**Failed**") and "outside the archive" in final[0] and "Fix:" in final[0]
    controls[1] = handle_file(__file__)  # not a zip: Gradio's own file-type check refuses it, with a message
    with pytest.raises(Exception) as err:
        c.predict("", *controls, api_name="/start")
    assert "Invalid file type" in str(err.value) and "Traceback" not in str(err.value)


WEB_PROCESS = """
import sys, time
from pathlib import Path
from app.jobs import JobManager
from app.ui import Studio, build
from pdd_engine import DistillConfig
from pdd_engine.cache import Store

tmp = Path(sys.argv[1])
manager = JobManager(str(tmp / "cache"), export_dir=str(tmp / "ex"))
studio = Studio(manager, Store(tmp / "cache"), tmp / "ex")
build(studio)
for method in ("dm", "mtt", "idc"):  # validation and the whole estimate, MTT's unroll memory included
    controls = studio.control_values(DistillConfig.make({"method": method}))
    for _ in range(120):
        valid, est, *_ = studio.check(*controls)
        if "about" in est:
            break
    assert valid.startswith("✓ valid") and "about" in est, (valid, est)
rows, *_ = studio.runs_table("web")
assert rows == [], rows  # the CLI's run belongs to no browser
job = manager.submit(DistillConfig(stages=1, ipc=1, iterations=3, eval_epochs=2, eval_models=1,
                                   compare_base="off", device="cpu"), "web")
frames = list(studio.follow(job.id))  # the engine's events, rendered as the page shows them
assert frames[-1][0].startswith("**Done**") and frames[-1][5], frames[-1][0]
choices = studio.runs_table("web")[1]["choices"]
assert len(choices) == 1 and studio.runs_table("someone else")[0] == []
files, problems = studio.download_runs([key for _, key in choices], "web")
assert files and not problems, problems
manager.shutdown()
print("TORCH" if any(m == "torch" or m.startswith("torch.") for m in sys.modules) else "NO TORCH")
"""


@pytest.mark.slow
def test_the_web_process_never_imports_torch(tmp_path, tiny):
    """Validation, estimates (timing and memory in the helper), the Runs tab, following a run and
    exporting one: the server process does all of it without importing torch."""
    import subprocess
    import sys
    from pathlib import Path

    from pdd_engine import distill
    from pdd_engine.cache import Store

    store = Store(tmp_path / "cache")
    distill(tiny(stages=1, ipc=1, iterations=3, eval_epochs=2, eval_models=1), store)  # one run record to list
    store.close()
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", WEB_PROCESS, str(tmp_path)], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "NO TORCH"


def test_stage_schedule_is_a_text_field_of_the_page(tmp_path):
    """"6,4" in the page's field becomes the schedule; a schedule that does not add up to Total IPC
    is refused on the validation line with the fix."""
    from app.ui import Studio
    from pdd_engine.cache import Store

    m = JobManager(str(tmp_path / "cache"))
    try:
        studio = Studio(m, Store(tmp_path / "cache"), tmp_path / "ex")
        names = ["dataset", "upload", "method", "stages", "ipc", "preset"] + [f.name for f in studio.fields]
        controls = studio.control_values(DistillConfig(stage_ipc="6,4"))
        assert controls[names.index("stage_ipc")] == "6,4"
        assert studio.config(*controls).ipcs == (6, 4)
        controls[names.index("stage_ipc")] = "6, 5"
        valid, _, run_button, *_ = studio.check(*controls)
        assert "pdd-error" in valid and "adds up to 11" in valid and "Fix: set IPC to 11" in valid
        controls[names.index("stage_ipc")] = ""
        assert studio.config(*controls).stage_ipc is None
        # the executor is a setting of the page: empty is the server's (PDD_EXECUTOR), else the one chosen
        assert controls[names.index("executor")] == "" and studio.config(*controls).executor is None
        controls[names.index("executor")] = "ray"
        assert studio.config(*controls).executor == "ray"
        assert studio.control_values(DistillConfig(executor="local"))[names.index("executor")] == "local"
    finally:
        m.shutdown()


def test_an_unknown_run_link_says_so_with_the_fix(tmp_path):
    """?run=<id> after a server restart: the page says the run is gone and how to get it back."""
    from app.ui import Studio
    from pdd_engine.cache import Store

    m = JobManager(str(tmp_path / "cache"))
    try:
        status = next(iter(Studio(m, Store(tmp_path / "cache"), tmp_path / "ex").follow_if_any("gone")))[0]
        assert "No run with that id on this server" in status and "finished stages come from the cache" in status
    finally:
        m.shutdown()


def refused(call):
    """The call's result, or None where the page itself refused it (gradio_client raises AppError)."""
    from gradio_client.exceptions import AppError
    try:
        return call()
    except AppError:
        return None


def upload_zip(tmp_path):
    from tests.test_userdata import make_folder
    make_folder(tmp_path / "mine", n=10)
    z = tmp_path / "mine.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted((tmp_path / "mine").rglob("*.png")):
            f.write(p, p.relative_to(tmp_path / "mine").as_posix())
    return z


@pytest.mark.slow
def test_runs_and_uploads_belong_to_the_browser_that_made_them(tmp_path):
    """Client A uploads a zip and runs it; client B (another browser) cannot list, export or delete
    A's run, even knowing its key, and nobody can fetch the upload back through the file route."""
    import httpx
    from gradio_client import Client, handle_file

    from app.ui import UPLOAD
    from pdd_engine.cache import Store

    data = upload_zip(tmp_path)
    with running_app(tmp_path) as url:
        # where the web framework keeps this upload (content-addressed: the run's upload lands there too)
        temp = httpx.post(url + "gradio_api/upload", files={"files": ("mine.zip", data.read_bytes())}).json()[0]
        assert httpx.get(url + "gradio_api/file=" + temp).status_code == 200  # served, before a run takes it
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        controls = list(TINY_CONTROLS)
        controls[0], controls[1] = UPLOAD, handle_file(str(data))
        job_id, owner_a, msg = a.predict("", *controls, api_name="/start")
        assert job_id and msg == "", msg
        final = follow(a, job_id)[1]
        assert final[0].startswith("**Done**")
        from pdd_engine.runs import owner_id
        bundle = Path(final[5])  # gradio_client's copy keeps the name; the server's lies in A's own folder
        assert [p.parent.name for p in (tmp_path / "exports").rglob(bundle.name)] == [owner_id(owner_a)]
        rows = a.predict(owner_a, api_name="/runs")[0]["data"]
        assert len(rows) == 1 and rows[0][1].startswith("folder:") and str(tmp_path) not in rows[0][1]
        store = Store(tmp_path / "cache")
        key = next(store.keys("run:"))
        assert b.predict("owner-b", api_name="/runs")[0]["data"] == []
        # B knows the key: the page refuses a choice it never offered B, and the server checks ownership
        assert refused(lambda: b.predict([key], "owner-b", api_name="/download")) in (None, (None, ""))
        assert refused(lambda: b.predict([key], "owner-b", api_name="/delete")) in (None, "Deleted 0 run record(s); "
                                                                                    "their stages stay cached for runs that share them.")
        from app.ui import Studio
        from app.jobs import JobManager
        server_side = Studio(JobManager(str(tmp_path / "cache")), store, tmp_path / "exports")
        assert server_side.selected([key], "owner-b") == [] and server_side.delete_runs([key], "owner-b").startswith("Deleted 0")
        server_side.manager.shutdown()
        assert len(a.predict(owner_a, api_name="/runs")[0]["data"]) == 1
        for path in (temp, *map(str, (tmp_path / "uploads").glob("*.zip"))):
            assert httpx.get(url + "gradio_api/file=" + path).status_code != 200, path
        assert "Deleted 1" in a.predict([key], owner_a, api_name="/delete")
        assert a.predict(owner_a, api_name="/runs")[0]["data"] == []
        store.close()


@pytest.mark.slow
def test_public_runs_are_listed_for_every_browser(tmp_path):
    from gradio_client import Client

    with running_app(tmp_path, PDD_PUBLIC_RUNS="1") as url:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        job_id, owner_a, _ = a.predict("", *TINY_CONTROLS, api_name="/start")
        assert follow(a, job_id)[1][0].startswith("**Done**")
        assert len(b.predict("owner-b", api_name="/runs")[0]["data"]) == 1


@pytest.mark.slow
def test_cached_replays_leave_descriptors_flat_and_old_jobs_are_forgotten(tmp_path):
    """Every finished job's queue and process handles are closed, and only the newest
    ``keep_finished`` finished jobs stay in memory (each holds its images)."""
    import os

    cfg = DistillConfig.make(dict(stages=1, ipc=1, iterations=3, eval_epochs=2, eval_models=1, compare_base="off",
                                  device="cpu"))
    m = JobManager(str(tmp_path / "cache"), threads=1, keep_finished=3)
    try:
        assert wait(m.submit(cfg, "me")).state == "done"  # computes; every later job is a cached replay
        time.sleep(0.5)
        before = len(os.listdir("/proc/self/fd"))
        jobs = [wait(m.submit(cfg, "me")) for _ in range(12)]
        assert all(j.state == "done" for j in jobs)
        t = time.time()  # the pump releases a job's handles once its process has exited, then forgets it
        while (len(m.jobs) > 3 or any(j.process or j.queue for j in jobs)) and time.time() - t < 20:
            time.sleep(0.1)
        assert len(os.listdir("/proc/self/fd")) - before <= 2  # was +4.5 per run
        assert [j.id for j in sorted(m.jobs.values(), key=lambda j: j.created)] == [j.id for j in jobs[-3:]]
    finally:
        m.shutdown()


@pytest.mark.slow
def test_client_previews_datasets_and_evaluates_a_bundle_on_two_architectures(app_url, tmp_path, tiny, store):
    """The named API endpoints preview_dataset and evaluate_bundle; bad bundles are one-line messages."""
    from gradio_client import Client, handle_file

    from pdd_engine import distill
    from pdd_engine.export import export_bundle
    from pdd_engine.manifest import manifest_arch

    c = Client(app_url, verbose=False)
    image, facts = c.predict("digits", None, api_name="/preview_dataset")
    assert "10 classes" in facts and "1,438 train / 359 test" in facts and Path(image).stat().st_size > 1000
    image, facts = c.predict("cifar10", None, api_name="/preview_dataset")
    assert image is None and "not on this machine" in facts  # facts without a download

    cfg = tiny(stages=2, ipc=2)
    distill(cfg, store)
    bundle = export_bundle(cfg, tmp_path / "run.zip", store)
    msg, table, _ = c.predict(handle_file(str(bundle)), "", ["same as exported", "convnet-w16"], 1, 2, None, "",
                              api_name="/evaluate_bundle")
    assert msg.startswith("✓ Evaluated on 2 architecture(s)"), msg
    arch = manifest_arch(load_bundle(bundle).manifest)
    assert [r[0] for r in table["data"]] == [f"recorded in the bundle ({arch})", "same as exported", "convnet-w16"]
    assert table["headers"] == ["architecture", "stage 1 (IPC 1)", "stage 2 (IPC 2)"]

    notzip = tmp_path / "notes.zip"
    notzip.write_text("hello")
    tampered = tampered_copy(bundle, tmp_path / "tampered.zip")  # its manifest's shape is checked before use
    for bad, words in ((notzip, "not a zip file"), (tampered, "malformed")):
        msg, _, _ = c.predict(handle_file(str(bad)), "", ["convnet"], 1, 1, None, "", api_name="/evaluate_bundle")
        assert words in msg and "Fix:" in msg and "Traceback" not in msg and msg.count("<br>") == 0, msg
    msg, _, _ = c.predict(handle_file(str(bundle)), "", ["vit"], 1, 1, None, "", api_name="/evaluate_bundle")
    assert "unknown architecture 'vit'" in msg


def test_a_stream_sends_only_what_changed(tmp_path):
    """Re-sending unchanged figures costs the server and the browser CPU the engine needs."""
    import gradio as gr

    from app.ui import Studio

    studio = Studio(None, None, tmp_path / "exports")
    events = fake_stream()
    shown = {}
    first = studio.frame(render.RunView.of(events[:8]), "running", shown=shown)
    assert all(v != gr.skip() for v in first[:5])  # the first frame draws everything
    again = studio.frame(render.RunView.of(events[:8]), "running", shown=shown)
    assert again[0] == first[0] and [v == gr.skip() for v in again[1:]] == [True] * 8
    later = studio.frame(render.RunView.of(events), "running", shown=shown)  # new images and a new evaluation
    assert later[2] != gr.skip() and later[4] != gr.skip() and later[3] == gr.skip()  # loss: not yet due again
    assert studio.frame(render.RunView.of(events), "running")[3] != gr.skip()  # without a stream: everything
