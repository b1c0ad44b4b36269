"""The server's disk is bounded: exports and uploads pruned by age and size, oldest first."""

import os
import time

from app.housekeeping import Bound, prune


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


def test_bounds_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PDD_EXPORT_KEEP_HOURS", "2")
    monkeypatch.setenv("PDD_EXPORT_MAX_GB", "0.5")
    b = Bound.from_env(tmp_path, "EXPORT", hours=24, gib=2)
    assert b.max_age_s == 7200 and b.max_bytes == 2 ** 29
    assert Bound.from_env(tmp_path, "UPLOAD", hours=24, gib=2).max_age_s == 24 * 3600


def test_a_missing_folder_prunes_nothing(tmp_path):
    assert prune(Bound(tmp_path / "never", 1, 1)) == []
