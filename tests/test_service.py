"""The one door (pdd_engine.service): ownership, limits and process health hold for every caller, in one place."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pdd_engine import events as E
from pdd_engine import service as S
from pdd_engine.errors import PDDError
from pdd_engine.service import Limits, RunState, Service

TINY = {"stages": 2, "ipc": 2, "iterations": 4, "eval_epochs": 3, "eval_models": 1, "dm_pool": 1,
        "transition_epochs": 2, "compare_base": "off", "device": "cpu"}
SLOW = {**TINY, "iterations": 4000}  # a run that is still going when the test acts on it
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    s = Service(tmp / "cache", tmp / "exports", tmp / "uploads", threads=1, limits=Limits(2.0, 3))
    yield s
    s.shutdown()


def finish(service, run_id, owner="alice", timeout=180):
    t = time.time()
    while not service.watch(run_id, owner).finished and time.time() - t < timeout:
        service.wait(run_id, len(service.watch(run_id, owner).events), 1.0)
    return service.watch(run_id, owner)


def running(service, run_id, owner="alice", timeout=120):
    """Wait until the run's engine is iterating; its pid."""
    t = time.time()
    while time.time() - t < timeout:
        view = service.watch(run_id, owner)
        if any(isinstance(e, E.Progress) for e in view.events):
            return next(iter(service.processes()["engine"]))
        time.sleep(0.2)
    raise AssertionError("the run never started iterating")


def upload(tmp_path, name="mine.zip"):
    from tests.test_userdata import make_folder
    make_folder(tmp_path / "imgs", n=6)
    z = tmp_path / name
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted((tmp_path / "imgs").rglob("*.png")):
            f.write(p, p.relative_to(tmp_path / "imgs").as_posix())
    return z


def test_a_stranger_reaches_nothing_of_anothers_run_or_upload(service, tmp_path):
    """Mallory knows Alice's run id (a ?run= link) and run key: she sees progress and images, never files;
    stop, resume, open, export, evaluate, compare, delete and her own listing give her nothing of Alice's."""
    view = finish(service, service.submit(TINY, "alice"))
    assert view.state is RunState.DONE and view.owned, view.events[-1]
    key = view.events[-1].run_key
    seen = service.watch(view.id, "mallory")
    assert not seen.owned and seen.state is RunState.DONE
    assert any(isinstance(e, E.StageImages) for e in seen.events) and not any(isinstance(e, E.Exported) for e in seen.events)
    started = next(e for e in seen.events if isinstance(e, E.RunStarted))
    assert "cache_dir" not in started.config and "data_root" not in started.config  # no server paths for anyone
    assert "another visitor" in service.stop(view.id, "mallory")
    for call in (lambda: service.resume(view.id, "mallory"), lambda: service.resume(view.id, ""),
                 lambda: service.open(key, "mallory"), lambda: service.bundle_path(None, key, "mallory"),
                 lambda: service.submit(TINY, "")):
        with pytest.raises(PDDError) as e:
            call()
        assert "\n" not in str(e.value) and "Fix:" in str(e.value)
    assert service.runs("mallory") == [] and service.records([key], "mallory") == []
    assert service.compare([key], "mallory")[0] == [] and service.table([key], "mallory").count("\n") == 1
    assert service.export(key, "mallory").path is None
    assert service.delete([key], "mallory") == 0 and [r.key for r in service.runs("alice")] == [key]
    mine = service.export(key, "alice")
    assert mine.path and Path(mine.path).exists() and len(mine.stage_paths) == 2
    assert Path(mine.path).parent.name not in ("alice", S.RunBook.__module__)  # a folder nobody can derive

    ref = service.keep_upload(str(upload(tmp_path)), "alice")
    assert ref.startswith("folder:") and service.preview(ref, "alice")["num_classes"] == 3
    for call in (lambda: service.preview(ref, "mallory"), lambda: service.submit({**TINY, "dataset": ref}, "mallory"),
                 lambda: service.submit({**TINY, "dataset": "folder:/etc"}, "alice"),
                 lambda: service.submit({**TINY, "data_root": "/etc"}, "alice")):
        with pytest.raises(PDDError, match="not one of your uploads|the server's setting"):
            call()
    assert not service.check({**TINY, "dataset": ref}, "mallory").ok and service.check({**TINY, "dataset": ref}, "alice").ok


@pytest.mark.slow
def test_over_a_cap_is_refused_in_one_line_before_any_work(service, monkeypatch):
    before = len(service._runs)
    for settings, variable in (({**TINY, "iterations": 10 ** 5}, "PDD_MAX_ITERATIONS"),
                               ({**TINY, "eval_models": 11}, "PDD_MAX_EVAL_MODELS"),
                               ({**TINY, "method": "mtt", "num_experts": 500}, "PDD_MAX_NUM_EXPERTS"),
                               ({**TINY, "iterations": 10 ** 9}, "iterations must be <= 1000000"),
                               ({**TINY, "max_memory_gb": 10 ** 6}, "max_memory_gb is the server's setting"),
                               ({**TINY, "executor": "ray"}, "executor is the server's setting"),
                               ({**TINY, "dataset": False}, "dataset must be a dataset's name"),
                               ({**TINY, "method": [1]}, "unknown method"),
                               ({**TINY, "dsa_strategy": 5}, "dsa_strategy must be text"),
                               ("not a dict", "one JSON object")):
        with pytest.raises(PDDError, match=variable) as e:
            service.submit(settings, "carol")
        assert "\n" not in str(e.value)
    monkeypatch.setattr(service, "limits", Limits(run_hours=1e-4, runs_per_visitor=3))
    with pytest.raises(PDDError, match=r"estimated at .* over this server's maximum of 0.0001 h per run \(PDD_MAX_RUN_HOURS\)"):
        service.submit(TINY, "carol")
    assert len(service._runs) == before  # refused before a run existed
    monkeypatch.setattr(service, "limits", Limits(run_hours=2.0, runs_per_visitor=3, run_gb=1e-3))
    with pytest.raises(PDDError, match=r"estimated to need .* GiB at its peak, over this server's maximum .*PDD_MAX_RUN_GB"):
        service.submit(TINY, "carol")
    monkeypatch.setattr(service, "limits", Limits(run_hours=2.0, runs_per_visitor=1))
    first = service.submit(SLOW, "carol")
    with pytest.raises(PDDError, match=r"you already have 1 run\(s\) queued or running.*PDD_MAX_RUNS_PER_VISITOR"):
        service.submit(TINY, "carol")
    other = service.submit(TINY, "dave")  # the cap is per visitor
    assert "Stopping" in service.stop(first, "carol") or "Removed" in service.stop(first, "carol")
    assert finish(service, first, "carol").state is RunState.STOPPED
    assert finish(service, other, "dave").state is RunState.DONE


@pytest.mark.slow
def test_concurrent_starts_cannot_slip_past_the_caps_together(service, monkeypatch):
    """Twelve starts at once from one visitor (and from twelve): the per-visitor and the server's caps hold,
    because a start is counted and reserved before it is checked."""
    monkeypatch.setattr(service, "limits", Limits(run_hours=2.0, runs_per_visitor=2, queued=5))
    barrier, results = threading.Barrier(12), []

    def start(owner):
        barrier.wait()
        try:
            results.append(service.submit({**SLOW, "seed": 11}, owner))
        except PDDError as e:
            results.append(e)
    for owners in (["pat"] * 12, [f"v{i}" for i in range(12)]):
        results.clear()
        threads = [threading.Thread(target=start, args=(o,)) for o in owners]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ids = [r for r in results if isinstance(r, str)]
        refused = [str(r) for r in results if isinstance(r, PDDError)]
        assert len(ids) == (2 if owners[0] == "pat" else 5 - 2), (ids, refused)
        assert all("PDD_MAX_RUNS_PER_VISITOR" in m or "PDD_MAX_QUEUED" in m for m in refused)
        if owners[0] == "pat":
            kept = ids
    for run_id in kept + ids:
        service.stop(run_id, "pat") if run_id in kept else None
    for run_id in ids:
        owner = next(r.owner for r in service._runs.values() if r.id == run_id)
        service.stop(run_id, owner)
    for run_id in kept + ids:
        assert finish(service, run_id, service._runs[run_id].owner).state.finished


def test_messages_name_files_never_server_folders(service, tmp_path):
    """A visitor's one-line errors cut every server path to its file name (a folder never shows, the export
    folder's secret name included), and Python's object addresses out."""
    text = ("/tmp/srv/uploads/ab12.zip has a single class; cannot identify image file <_io.BytesIO object at 0x7f3a> "
            "Fix: free space in /tmp/srv/exports/9f8e7d6c5b4a/, the disk holding /tmp/srv/exports/9f8e7d6c5b4a is full")
    out = service.redact(text)
    assert out.startswith("ab12.zip has a single class") and "9f8e7d6c5b4a" not in out and "/tmp" not in out
    assert "object at" not in out and "a folder on the server" in out
    from tests.test_userdata import make_folder
    make_folder(tmp_path / "one", classes=("solo",), n=4)
    z = tmp_path / "one.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted((tmp_path / "one").rglob("*.png")):
            f.write(p, p.relative_to(tmp_path / "one").as_posix())
    ref = service.keep_upload(str(z), "quinn")
    with pytest.raises(PDDError) as e:
        service.preview(ref, "quinn")
    assert "has a single class" in str(e.value) and str(service.upload_dir) not in str(e.value)


@pytest.mark.slow
def test_a_stopped_helper_is_replaced_and_nobody_waits_on_it(service):
    """kill -STOP of the helper (a hang, not a death): within a few seconds it is replaced, and calls work."""
    service.check(TINY, "rita")
    pid = service.helper.pids()[0]
    os.kill(pid, signal.SIGSTOP)
    t = time.time()
    while S.process_state(pid) not in ("", "Z") and time.time() - t < 15:
        time.sleep(0.2)
    assert S.process_state(pid) in ("", "Z")  # killed (a zombie until its pool reaps it)
    assert service.preview("digits", "rita", timeout=120)["num_classes"] == 10 and time.time() - t < 120


@pytest.mark.slow
def test_an_evaluation_is_bounded_and_one_per_visitor(service):
    view = finish(service, service.submit({**TINY, "seed": 21}, "sam"), "sam")
    path, _ = service.bundle_path(None, view.events[-1].run_key, "sam")
    for archs, epochs, words in (([None] * 5, 1, "5 architectures in one evaluation"),
                                 ([None], 10 ** 6, "eval_epochs must be <= 100000"),
                                 ([None], 5000, "PDD_MAX_EVAL_EPOCHS"), (["convnet-w4096"], 1, "width must be <= 1024")):
        with pytest.raises(PDDError, match=words):
            list(service.evaluate_bundle(path, archs, 1, epochs, None, "sam"))
    running = service.evaluate_bundle(path, [None, None], 1, 200, None, "sam")
    next(running)  # the first architecture done; the evaluation holds its visitor's slot until it ends
    with pytest.raises(PDDError, match="already have an evaluation"):
        list(service.evaluate_bundle(path, [None], 1, 1, None, "sam"))
    assert len(list(service.evaluate_bundle(path, [None], 1, 1, None, "tom"))) == 1  # another visitor's goes on
    running.close()
    assert len(list(service.evaluate_bundle(path, [None], 1, 1, None, "sam"))) == 1


def kill_during(call, pids, timeout=60):
    """Run ``call`` in a thread and kill -9 the child ``pids()`` names while the call is in it; the result."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", call()), daemon=True)
    thread.start()
    t = time.time()
    while not pids() and time.time() - t < timeout:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the call now
    victim = pids()[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout)
    assert "result" in out, "the call did not come back after its process was killed"
    return victim, out["result"]


@pytest.mark.slow
def test_a_killed_child_of_each_kind_is_replaced_and_the_next_call_succeeds(service):
    run = finish(service, service.submit({**TINY, "seed": 7}, "erin"), "erin")
    key = run.events[-1].run_key
    # the helper, while it times a network: the call is retried in a new helper and answers
    victim, cost = kill_during(lambda: service.helper.call("time_network", 1, 28, 10, 3, 256, "instance", "cpu"),
                               lambda: service.helper.pids())
    assert cost[1] > 0 and victim not in service.helper.pids()
    assert service.check(TINY, "erin").ok and service.preview("digits", "erin")["num_classes"] == 10
    # the evaluator, while it re-trains a bundle: retried, and the next evaluation works
    path, _ = service.bundle_path(None, key, "erin")
    victim, accs = kill_during(lambda: list(service.evaluate_bundle(path, [None], 1, 300, None, "erin")),
                               lambda: service.evaluator.pids())
    assert len(accs[0][1]) == 2 and victim not in service.evaluator.pids()
    assert len(list(service.evaluate_bundle(path, [None], 1, 1, None, "erin"))[0][1]) == 2
    # the engine, while it runs: that run fails in one line, the next run finishes
    slow = service.submit({**SLOW, "seed": 8}, "erin")
    os.kill(running(service, slow, "erin"), signal.SIGKILL)
    failed = finish(service, slow, "erin")
    assert failed.state is RunState.FAILED and "exited unexpectedly" in failed.events[-1].message
    assert finish(service, service.submit({**TINY, "seed": 9}, "erin"), "erin").state is RunState.DONE


@pytest.mark.slow
def test_stop_ends_an_engine_that_ignores_it(service, monkeypatch):
    """A SIGSTOPped engine cannot see the stop request or SIGTERM: Stop escalates to kill."""
    monkeypatch.setattr(S, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(S, "KILL_GRACE_S", 0.5)
    run_id = service.submit({**SLOW, "seed": 3}, "frank")
    pid = running(service, run_id, "frank")
    os.kill(pid, signal.SIGSTOP)
    assert "Stopping" in service.stop(run_id, "frank")
    view = finish(service, run_id, "frank", timeout=20)
    assert view.state is RunState.STOPPED and "finished stages are cached" in view.events[-1].message
    t = time.time()
    while Path(f"/proc/{pid}").exists() and time.time() - t < 10:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_failed_export_is_one_line_leaves_no_file_and_the_run_stays_listed(tmp_path, tiny, monkeypatch):
    """A full disk while exporting (an injected ENOSPC): the error names the folder's variable, no partial
    bundle is left to be reused, the run is listed; once there is space, the same run exports."""
    from pdd_engine import distill, worker
    from pdd_engine.cache import Store
    from pdd_engine.runs import book

    store = Store(tmp_path / "cache")
    done = distill(tiny(stages=2, ipc=2), store)
    book(store).claim(done.run_key, "gina")
    real = zipfile.ZipFile.writestr
    calls = []

    def full(self, name, data, *a, **k):
        calls.append(name)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, data, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    out = worker.export_run(str(tmp_path / "cache"), done.run_key, str(tmp_path / "ex"), store)
    assert out.path is None and "disk" in out.error and "full" in out.error and "PDD_EXPORT_DIR" in out.error
    assert "\n" not in out.error and list((tmp_path / "ex").iterdir()) == []  # no partial file, no temporary one
    assert [r.key for r in book(store).records("gina")] == [done.run_key]
    monkeypatch.setattr(zipfile.ZipFile, "writestr", real)
    again = worker.export_run(str(tmp_path / "cache"), done.run_key, str(tmp_path / "ex"), store)
    assert again.path and again.error == "" and zipfile.ZipFile(again.path).testzip() is None
    Path(again.path).write_bytes(Path(again.path).read_bytes()[:1000])  # truncated since: written again, not reused
    third = worker.export_run(str(tmp_path / "cache"), done.run_key, str(tmp_path / "ex"), store)
    assert third.path == again.path and zipfile.ZipFile(third.path).testzip() is None


@pytest.mark.slow
def test_run_records_outlive_a_cache_too_small_for_their_stages(tmp_path, tiny):
    from pdd_engine import distill
    from pdd_engine.cache import Store
    from pdd_engine.errors import CacheError
    from pdd_engine.runs import book

    store = Store(tmp_path / "cache", size_limit_gb=0.4 / 1024)  # 0.4 MiB: room for one small run's stages
    keys = []
    for seed in range(4):
        done = distill(tiny(stages=1, ipc=1, seed=seed, compare_base="off"), store)
        book(store).claim(done.run_key, "hank")
        keys.append(done.run_key)
    assert sorted(r.key for r in book(store).records("hank")) == sorted(keys)  # every run listed
    assert len(list(store.keys("stage:"))) < 4  # though the cache kept only some of their stages
    with pytest.raises(CacheError, match="PDD_CACHE_GB"):
        Store(tmp_path / "c0", size_limit_gb=0)
    for value, words in (("0", "PDD_CACHE_GB='0' is below 0.01"), ("abc", "PDD_CACHE_GB='abc' is not a number")):
        out = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PDD_CACHE_GB": value, "PDD_CACHE_DIR": str(tmp_path / "c1")})
        assert out.returncode != 0 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-500:]
        out = subprocess.run([sys.executable, "-m", "pdd_engine", "runs", "--cache-dir", str(tmp_path / "c2")],
                             capture_output=True, text=True, env={**os.environ, "PDD_CACHE_GB": value}, timeout=60)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-500:]


@pytest.mark.slow
def test_stagewise_runs_match_a_normal_run_one_call_per_stage(tmp_path, monkeypatch):
    """The ZeroGPU path: one (fake) spaces.GPU call per stage, same results as an engine process."""
    import types

    from pdd_engine import DistillConfig, distill
    from pdd_engine.cache import Store

    calls = []
    fake = types.SimpleNamespace(GPU=lambda duration: (lambda fn: (lambda *a: calls.append(a[2]) or fn(*a))))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    settings = {**TINY, "stages": 3, "ipc": 3}
    s = Service(tmp_path / "a", tmp_path / "ex", stagewise=True)
    try:
        view = finish(s, s.submit(settings, "ivy"), "ivy")
        assert view.state is RunState.DONE and calls == [1, 2, 3]
        exported = next(e for e in view.events if isinstance(e, E.Exported))
        assert exported.path and len(exported.stage_paths) == 3
        done = view.events[-1]
        assert done.accuracies == distill(DistillConfig.make(settings), Store(tmp_path / "b")).accuracies
        assert [r.key for r in s.runs("ivy")] == [done.run_key] and s.runs("jack") == []
    finally:
        s.shutdown()


def test_the_real_spaces_package_hands_back_the_stage_call(monkeypatch):
    """Outside a Space the real ``spaces`` package's decorator returns the function itself."""
    import spaces  # noqa: F401 - the real one: the test command installs it

    from pdd_engine import worker
    assert S.stage_function(60) is worker.stage_call


@pytest.mark.slow
def test_a_public_server_lists_every_run_for_everyone(tmp_path):
    s = Service(tmp_path / "cache", public=True)
    try:
        view = finish(s, s.submit(TINY, "kim"), "kim")
        key = view.events[-1].run_key
        assert [r.key for r in s.runs("lee")] == [key] and s.watch(view.id, "lee").owned
        assert s.export(key, "lee").path
    finally:
        s.shutdown()


@pytest.mark.slow
def test_replays_leave_descriptors_flat_and_old_runs_are_forgotten(tmp_path):
    """Every finished run's queue and process handles are closed, and only the newest ``keep_finished``
    finished runs stay in memory (each holds its images)."""
    s = Service(tmp_path / "cache", threads=1, keep_finished=3, limits=Limits(2.0, 20))
    try:
        settings = {**TINY, "stages": 1, "ipc": 1}
        assert finish(s, s.submit(settings, "max"), "max").state is RunState.DONE  # every later run is a replay
        time.sleep(0.5)
        before = len(os.listdir("/proc/self/fd"))
        ids = [s.submit(settings, "max") for _ in range(8)]
        assert all(finish(s, i, "max").state is RunState.DONE for i in ids)
        t = time.time()  # the pump releases a run's handles once its process has exited, then forgets it
        while (len(s._runs) > 3 or any(r.process or r.queue for r in s._runs.values())) and time.time() - t < 20:
            time.sleep(0.1)
        assert len(os.listdir("/proc/self/fd")) - before <= 2
        assert sorted(s._runs) == sorted(ids[-3:]) and s.watch(ids[0], "max") is None
    finally:
        s.shutdown()


def test_engine_threads_leave_a_core_for_the_web_server_and_share_the_rest():
    """0 means: the cores less one (the server's and a local browser's), split among the runs at once;
    never fewer than one; an operator's own number wins."""
    assert S.engine_threads(0, 2, 1) == 2 and S.engine_threads(0, 2, 1, side_lane=False) == 1  # two lanes of one
    assert S.engine_threads(0, 2, 2) == 1
    assert S.engine_threads(0, 16, 1) == 15
    assert S.engine_threads(0, 16, 4) == 3
    assert S.engine_threads(0, 1, 1) == 1 and S.engine_threads(0, 4, 8) == 1
    assert S.engine_threads(3, 2, 1) == 3


def test_the_service_gives_its_engines_the_resolved_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(S.os, "sched_getaffinity", lambda pid: set(range(8)))
    s = Service(tmp_path / "cache", max_concurrent=2)
    try:
        assert s.threads == 3  # (8 - 1) // 2, what run_engine and the evaluator are handed
    finally:
        s.shutdown()


@pytest.mark.slow
def test_children_wait_passively_unless_the_server_was_told_otherwise(tmp_path, monkeypatch):
    """Engine threads that share the cores with the web server must not spin (docs/scaling.md): the children
    start with OMP_WAIT_POLICY=PASSIVE; an operator's own value is kept."""
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if given is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", given)
        s = Service(tmp_path / str(given), threads=1)
        try:
            assert s.helper._pool().submit(os.getenv, "OMP_WAIT_POLICY").result(timeout=120) == expected
        finally:
            s.shutdown()


@pytest.mark.slow
def test_a_failed_engine_start_fails_one_run_and_the_next_runs(tmp_path):
    s = Service(tmp_path / "cache", threads=1)
    s.schema()  # the helper is up: only the engine's start fails
    real, calls = s.ctx.Process, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real(*a, **k)
    s.ctx.Process = flaky
    try:
        first = finish(s, s.submit(TINY, "ned"), "ned")
        assert first.state is RunState.FAILED and "could not start (OSError" in first.events[-1].message
        assert finish(s, s.submit({**TINY, "seed": 1}, "ned"), "ned").state is RunState.DONE
    finally:
        s.shutdown()


@pytest.mark.slow
def test_engines_and_helpers_exit_when_the_server_is_killed(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", f"""
import time
from pdd_engine.service import Service
if __name__ == "__main__":
    s = Service({str(tmp_path / "c")!r}, threads=1)
    run = s.submit({{"iterations": 4000, "eval_models": 1, "device": "cpu"}}, "me")
    while not s.processes()["engine"] or not s.watch(run, "me").events:
        time.sleep(0.1)
    print(*s.processes()["engine"], *s.processes()["helper"], flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, cwd=ROOT)
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
    while any(alive(p) for p in children) and time.time() - deadline < 0:
        time.sleep(0.2)
    assert not any(alive(p) for p in children)


def test_a_hostile_upload_is_refused_with_the_reason_its_preview_gives(service, tmp_path):
    """The settings that name an unreadable upload are invalid, for the same reason the data panel shows:
    the validation line once said valid beside a data panel that said the upload was broken."""
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("a/0.png", b"x")
        z.writestr("../../../etc/escaped.png", b"x")
    ref = service.keep_upload(str(evil), "olga")
    with pytest.raises(PDDError, match="outside the archive") as shown:
        service.preview(ref, "olga")
    checked = service.check({**TINY, "dataset": ref}, "olga", wait=30)
    assert not checked.ok and checked.error == str(shown.value)
    with pytest.raises(PDDError, match="outside the archive") as refused:
        service.submit({**TINY, "dataset": ref}, "olga")
    assert "Fix:" in str(refused.value) and str(service.upload_dir) not in str(refused.value)
    assert not [r for r in service._runs.values() if r.owner == "olga" and not r.state.finished]
    with pytest.raises(PDDError, match="notes.txt is not a .zip file"):
        service.keep_upload(str(tmp_path / "notes.txt"), "olga")


def sized_zip(path, sizes, classes="ab", per_class=4):
    """A zip of ``per_class`` PNGs per class, image i of each class ``sizes[i % len(sizes)]`` px a side."""
    from tests.test_untrusted import image_bytes
    with zipfile.ZipFile(path, "w") as z:
        for c in classes:
            for i in range(per_class):
                z.writestr(f"{c}/{i}.png", image_bytes(sizes[i % len(sizes)], "L", "PNG"))
    return path


def test_an_upload_is_read_at_the_image_size_the_settings_give(service, tmp_path):
    """Mixed sizes need Image size: the check reads the upload as the run will, at that size, so setting
    it makes the settings valid (the check once read every upload at its own size and refused them all)."""
    ref = service.keep_upload(str(sized_zip(tmp_path / "mixed.zip", [16, 24])), "nina")
    bare = service.check({**TINY, "dataset": ref}, "nina", wait=60)
    assert not bare.ok and "mixed sizes" in bare.error and "Image size" in bare.error
    sized = service.check({**TINY, "dataset": ref, "image_size": 16}, "nina", wait=60)
    assert sized.ok, sized.error
    assert service.preview(ref, "nina", image_size=16)["size"] == 16
    assert not service.check({**TINY, "dataset": ref, "image_size": 3}, "nina", wait=60).ok  # the config's bounds


def test_an_upload_still_being_read_is_pending_then_checked(service, tmp_path):
    """A check that cannot wait for the upload's preview says so (not valid, not invalid); once read, the
    answer is remembered, a failure too, so a broken upload is read once, not on every control change."""
    ref = service.keep_upload(str(sized_zip(tmp_path / "fresh.zip", [8], per_class=3)), "nina")
    first = service.check({**TINY, "dataset": ref}, "nina", wait=0)
    assert not first.ok and first.pending and "still being read" in first.error
    assert service.check({**TINY, "dataset": ref}, "nina", wait=60).ok
    broken = service.keep_upload(str(sized_zip(tmp_path / "one.zip", [8], per_class=1)), "nina")
    with pytest.raises(PDDError, match="has 1 image"):
        service.preview(broken, "nina")
    assert ("preview", broken, service.data_root, None) in service.helper.answers  # the failure is remembered
    refused = service.check({**TINY, "dataset": broken}, "nina", wait=0)  # answered from memory, at once
    assert not refused.ok and not refused.pending and "has 1 image" in refused.error


def test_an_upload_kept_again_is_fresh_and_one_pruned_says_upload_it_again(service, tmp_path):
    z = sized_zip(tmp_path / "again.zip", [8], per_class=3)
    ref = service.keep_upload(str(z), "nina")
    kept = Path(ref.removeprefix("folder:"))
    os.utime(kept, (1, 1))  # as old as the housekeeping's oldest
    service.preview(ref, "nina")
    ref2 = service.keep_upload(str(sized_zip(tmp_path / "again2.zip", [8], per_class=3)), "nina")
    assert ref2 == ref and time.time() - kept.stat().st_mtime < 60  # the same content, kept as new
    assert ("preview", ref, service.data_root, None) not in service.helper.answers  # read again when asked
    for spelling in (f"folder:{kept.parent}//{kept.name}", f"folder:{kept.parent}/./{kept.name}"):
        assert service._settings({"dataset": spelling}, "nina")["dataset"] == ref  # one spelling, one cache entry
    run_id = service.submit({**SLOW, "dataset": ref}, "nina")
    assert kept.resolve() in service.uploads_in_use()  # the housekeeping spares it (tests/test_housekeeping.py)
    service.stop(run_id, "nina")
    finish(service, run_id, "nina")
    assert kept.resolve() not in service.uploads_in_use()
    kept.unlink()  # pruned by the housekeeping
    gone = service.check({**TINY, "dataset": ref}, "nina", wait=60)
    assert not gone.ok and "no longer on this server" in gone.error and "upload the .zip again" in gone.error
    too_long = service.check({**TINY, "dataset": f"folder:{kept.parent}/{'x' * 300}.zip"}, "nina", wait=60)
    assert not too_long.ok and "not one of your uploads" in too_long.error  # not OSError's "name too long"


def test_visitors_who_send_the_same_file_share_its_path_and_each_owns_what_was_kept(service, tmp_path, monkeypatch):
    """The web framework names a temporary upload by its bytes, so two visitors who send the same file (a class
    given one example zip) hand in the same path, and a page's two handlers ask at once. The first keep moves
    the file; the others get the same kept upload, as theirs, not "the upload could not be kept" for a good
    upload. A path never kept is still refused as before, and ownership stays with who sent the bytes."""
    from concurrent.futures import ThreadPoolExecutor
    z = sized_zip(tmp_path / "class.zip", [8], per_class=3)
    claim = service.book.claim_upload

    def slow_claim(name, owner):  # every caller inside keep_upload before the first has moved the file
        time.sleep(0.2)
        claim(name, owner)
    monkeypatch.setattr(service.book, "claim_upload", slow_claim)
    with ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(lambda who: service.keep_upload(str(z), who), ["ann", "ann", "bob", "bob"]))
    assert len(set(refs)) == 1 and refs[0].startswith("folder:") and not z.exists()
    assert service.check({**TINY, "dataset": refs[0]}, "ann").ok and service.check({**TINY, "dataset": refs[0]}, "bob").ok
    assert service.keep_upload(str(z), "cy") == refs[0]  # later, the same path: the same bytes, now cy's too
    assert not service.check({**TINY, "dataset": refs[0]}, "dee").ok  # who never sent them owns nothing
    with pytest.raises(PDDError, match="could not be kept"):
        service.keep_upload(str(tmp_path / "never.zip"), "dee")


def test_settings_invalid_whatever_the_data_are_refused_before_the_upload_is_read(service, tmp_path):
    """An Image size out of bounds is the config's to name, not the upload's "mixed sizes, set Image size"."""
    ref = service.keep_upload(str(sized_zip(tmp_path / "mixed2.zip", [16, 24])), "nina")
    for bad in (3, 129, -1, 16.5):
        c = service.check({**TINY, "dataset": ref, "image_size": bad}, "nina", wait=60)
        assert not c.ok and "mixed sizes" not in c.error and "image_size" in c.error.lower(), (bad, c.error)
    with pytest.raises(PDDError, match="iterations") as refused:
        service.submit({**TINY, "dataset": ref, "iterations": -5}, "nina")
    assert ("preview", ref, service.data_root, None) not in service.helper.answers  # never read for it
