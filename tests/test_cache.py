"""The store under damage: corrupt or foreign entries are dropped and recomputed with a notice, and
an unusable cache directory is one clear line, never a crash and never a deleted stage."""

import errno

import pytest
import torch

from pdd_engine import events as E
from pdd_engine import distill, run
from pdd_engine.cache import FORMAT, FORMAT_KEY, Store, pack
from pdd_engine.errors import CacheError
from pdd_engine.keys import Keys


def test_store_round_trip_and_foreign_entry(tmp_path):
    notes = []
    s = Store(tmp_path, notice=notes.append)
    s.put("a", {"x": torch.arange(3)}, {"k": 1})
    t, m = s.get("a")
    assert t["x"].tolist() == [0, 1, 2] and m["k"] == 1
    s._cache.set("b", s._cache.get("a"))  # a value copied under another key
    assert s.get("b") is None and "b" not in s and "another key" in notes[-1]
    assert s.get("a") is not None  # only the foreign entry went


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape", "foreign"])
@pytest.mark.slow
def test_damaged_stage_is_dropped_and_recomputed(tiny, tmp_path, digits, damage):
    cfg = tiny(stages=2)
    store = Store(tmp_path / "c")
    reference = distill(cfg, store).accuracies
    keys = Keys.of(cfg, digits)
    key = keys.stage(2)
    blob = store._cache.get(key)
    bad = {"truncate": blob[: len(blob) // 2], "garbage": b"\x00" * 100,
           "wrong shape": pack({"stored": torch.zeros(3, 1, 8, 8), "labels": torch.zeros(3), "train_x": torch.zeros(3, 1, 8, 8),
                                "train_y": torch.zeros(3), "real_keep": torch.ones(3, dtype=torch.bool)},
                               {"lr": None, "losses": [], "_key": key}),
           "foreign": store._cache.get(keys.stage(1))}[damage]
    store._cache.set(key, bad)
    evs = list(run(cfg, store))
    assert isinstance(evs[-1], E.Done), evs[-1]
    notes = [e.text for e in evs if isinstance(e, E.Message) and "dropped it, recomputing" in e.text]
    assert len(notes) == 1
    assert evs[-1].computed_stages == [2]
    assert evs[-1].accuracies == reference  # recomputed bit for bit, and stage 1 was kept
    assert store.get(keys.stage(1)) is not None


@pytest.mark.slow
def test_damaged_evaluation_and_experts_are_recomputed(tiny, tmp_path, digits):
    cfg = tiny(method="mtt", stages=1, ipc=1)
    store = Store(tmp_path / "c", notice=lambda m: None)
    reference = distill(cfg, store).accuracies
    keys = Keys.of(cfg, digits)
    for key in (keys.eval(1), keys.memo("experts", 1)):
        store._cache.set(key, b"not safetensors")
    evs = list(run(cfg.replace(iterations=21), store))  # a new stage 1 that needs the experts again
    assert isinstance(evs[-1], E.Done), evs[-1]
    texts = [e.text for e in evs if isinstance(e, E.Message)]
    assert any("training expert" in t for t in texts) and any("dropped it" in t for t in texts)
    evs = list(run(cfg, store))
    assert evs[-1].accuracies == reference


def test_cache_from_a_newer_engine_is_refused_without_touching_it(tmp_path):
    s = Store(tmp_path)
    s.put("stage:x", {"x": torch.ones(1)}, {})
    s._cache.set(FORMAT_KEY, FORMAT + 1)
    s.close()
    with pytest.raises(CacheError, match="newer PDD Studio.*Fix: upgrade PDD Studio, or use another folder with --cache-dir"):
        Store(tmp_path)
    import diskcache
    assert "stage:x" in diskcache.Cache(str(tmp_path))  # left for the newer engine


def test_unusable_cache_directory_is_one_line(tmp_path, tiny):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="cannot open the cache .*Fix: use a writable folder with --cache-dir"):
        Store(blocker / "cache")


def test_full_disk_fails_the_run_with_the_fix_and_keeps_finished_stages(tiny, tmp_path, monkeypatch):
    store = Store(tmp_path / "c")
    cfg = tiny(stages=2)
    distill(cfg.replace(stages=1, ipc=1), store)
    before = set(store.keys())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store._cache, "set", full)
    evs = list(run(cfg, store))
    assert isinstance(evs[-1], E.Failed)
    assert "disk holding the cache" in evs[-1].message and "Fix: free space there" in evs[-1].message
    assert set(store.keys()) == before


class Planted:
    """A value whose unpickling would write a file: reading the cache must never do it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickles_are_refused_without_running(tmp_path, capsys):
    import diskcache

    from pdd_engine import runs
    from pdd_engine.__main__ import main

    marker = tmp_path / "pwned"
    raw = diskcache.Cache(str(tmp_path / "c"))  # another tool writing the same folder in pickle mode
    raw.set("run:evil", Planted(marker))
    raw.set(("run:", "tuple key"), b"x")  # a pickled key
    raw.set(Planted(marker), b"x")
    raw.close()
    notes = []
    s = Store(tmp_path / "c", notice=notes.append)
    assert s.get("run:evil") is None and any("not stored as bytes" in n for n in notes)
    assert runs.book(s).records() == [] and sorted(s.keys()) == [FORMAT_KEY]
    assert main(["runs", "--cache-dir", str(tmp_path / "c")]) == 0
    assert not marker.exists()
