"""The server's upkeep: exports and uploads pruned by age and size, oldest first; the queue polls calmly."""

import os
import time

import gradio as gr

from app.housekeeping import PROGRESS_POLL_S, QUEUE_POLL_S, Bound, prune, quiet_queue


def touch(path, size, age_s, now):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_prune_by_age_then_by_size_oldest_first(tmp_path):
    now = time.time()
    old = touch(tmp_path / "owner1" / "old.zip", 10, 3 * 3600, now)
    a = touch(tmp_path / "owner1" / "a.zip", 40, 1800, now)
    b = touch(tmp_path / "owner2" / "b.zip", 40, 900, now)
    c = touch(tmp_path / "owner2" / "c.zip", 40, 60, now)
    gone = prune(Bound(tmp_path, max_age_s=2 * 3600, max_bytes=100), now)
    assert gone == [old, a]  # too old; then the oldest until 80 bytes fit under 100
    assert not old.exists() and not a.exists() and b.exists() and c.exists()
    assert not (tmp_path / "owner1").exists()  # an emptied owner folder goes too
    assert prune(Bound(tmp_path, 2 * 3600, 100), now) == []


def test_an_upload_a_live_run_will_read_is_never_pruned(tmp_path):
    now = time.time()
    busy = touch(tmp_path / "busy.zip", 10, 30 * 24 * 3600, now)
    idle = touch(tmp_path / "idle.zip", 10, 30 * 24 * 3600, now)
    assert prune(Bound(tmp_path, 3600, 10 ** 6), now, busy=frozenset({busy.resolve()})) == [idle]
    assert busy.exists()


def test_bounds_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PDD_EXPORT_KEEP_HOURS", "2")
    monkeypatch.setenv("PDD_EXPORT_MAX_GB", "0.5")
    b = Bound.from_env(tmp_path, "EXPORT")
    assert b.max_age_s == 7200 and b.max_bytes == 2 ** 29
    assert Bound.from_env(tmp_path, "UPLOAD").max_age_s == 7 * 24 * 3600  # its default: a week


def test_a_missing_folder_prunes_nothing(tmp_path):
    assert prune(Bound(tmp_path / "never", 1, 1)) == []


def test_a_setting_that_is_not_a_number_stops_the_server_in_one_line(tmp_path):
    """PDD_EXPORT_KEEP_HOURS=two (or PDD_MAX_JOBS=x ...) at start: one line naming the variable and the fix,
    no traceback; the same value as a number starts as usual (tested by every app test)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for var, value in (("PDD_EXPORT_KEEP_HOURS", "two"), ("PDD_MAX_JOBS", "1.5"), ("GRADIO_SERVER_PORT", "http")):
        env = {**os.environ, "PDD_CACHE_DIR": str(tmp_path / "cache"), var: value}
        out = subprocess.run([sys.executable, str(root / "app.py")], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1].startswith(f"error: {var}={value!r} is not a"), out.stderr
        assert f"Fix: set {var} to" in out.stderr


def test_the_queue_polls_calmly_after_quiet_queue():
    """Gradio's queue polls every millisecond by default; quiet_queue slows it (private attributes: a Gradio
    release that renames them fails here rather than silently bringing the idle CPU back)."""
    with gr.Blocks() as demo:
        gr.Button("x")
    demo.queue()
    assert demo._queue.sleep_when_free < QUEUE_POLL_S  # what this Gradio does by itself
    assert quiet_queue(demo)
    assert demo._queue.sleep_when_free == QUEUE_POLL_S
    assert demo._queue.progress_update_sleep_when_free == PROGRESS_POLL_S
    assert not quiet_queue(object())  # no queue to slow: the server still starts
