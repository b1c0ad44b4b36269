"""The PDD stage loop: frozen subsets, caching, extension, resume, and error paths."""

import pytest
import torch

from pdd_engine import events as E
from pdd_engine import run
from pdd_engine.keys import Keys


def events(cfg, store, cancel=None):
    return list(run(cfg, store, cancel))


def done(evs):
    assert isinstance(evs[-1], E.Done), evs[-1]
    return evs[-1]


def test_stream_has_every_event_kind_in_order(tiny, store):
    evs = events(tiny(), store)
    kinds = [type(e).__name__ for e in evs]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Done"
    for stage in (1, 2):
        mine = [type(e).__name__ for e in evs if getattr(e, "stage", None) == stage]
        assert mine[0] == "StageStarted" and mine[-1] == "StageFinished"
        assert {"Progress", "StageImages", "StageEvaluated"} <= set(mine)
    imgs = [e for e in evs if isinstance(e, E.StageImages)]
    assert imgs[1].images.shape == (20, 8, 8, 1) and imgs[1].images.dtype.name == "uint8"
    assert imgs[1].new.sum() == 10 and imgs[0].new.all()
    assert all(e.learned_lr is None for e in evs if isinstance(e, E.StageFinished))  # DM learns no lr


def test_later_stages_take_their_own_iterations_and_image_learning_rate(tiny, store, digits):
    """later_iterations and later_lr_scale change stages 2..P alone: stage 1 is served from the cache,
    stage 2 runs its own number of updates, and at a vanishing rate its images stay where they started
    however many updates it takes, while at the full rate they move."""
    base = tiny(eval_epochs=1)

    def stage2(**later):
        cfg = base.replace(**later)
        evs = events(cfg, store)
        started = {e.stage: e.cached for e in evs if isinstance(e, E.StageStarted)}
        updates = max(e.iteration for e in evs if isinstance(e, E.Progress) and e.stage == 2)
        return started, updates, store.get(Keys.of(cfg, digits).stage(2))[0]["stored"]

    done(events(base, store))
    started, updates, still_one = stage2(later_iterations=1, later_lr_scale=1e-9)
    assert started == {1: True, 2: False} and updates == 1
    _, updates, still_many = stage2(later_iterations=8, later_lr_scale=1e-9)
    _, _, moved = stage2(later_iterations=8)
    assert updates == 8
    torch.testing.assert_close(still_many, still_one, atol=1e-5, rtol=0)
    assert (moved - still_one).abs().max() > 1e-3


@pytest.mark.slow
def test_frozen_subsets_stay_bit_identical(tiny, store, digits):
    for method in ("dm", "mtt"):
        cfg = tiny(method=method)
        done(events(cfg, store))
        keys = Keys.of(cfg, digits)
        s1, _ = store.get(keys.stage(1))
        s2, _ = store.get(keys.stage(2))
        # stage 2 was distilled with stage 1 frozen: its record does not contain or alter stage 1,
        # and stage 1's cached tensors are the ones a 1-stage run produces
        assert not torch.equal(s1["stored"], s2["stored"])
        one = events(cfg.replace(stages=1, ipc=1), store)
        assert done(one).computed_stages == []
        imgs = [e for e in events(cfg, store) if isinstance(e, E.StageImages)]
        first = imgs[0].images
        assert (imgs[1].images[~imgs[1].new] == first).all()


def test_repeated_run_is_served_from_cache(tiny, store, monkeypatch):
    done(events(tiny(), store))
    import pdd_engine.training as T

    def no_training(*a, **k):
        raise AssertionError("trained although everything was cached")
    monkeypatch.setattr(T, "train_epochs", no_training)
    monkeypatch.setattr("pdd_engine.evaluate.train_epochs", no_training)
    writes = store.writes
    d = done(events(tiny(), store))
    assert d.computed_stages == [] and store.writes == writes  # nothing stored again (the record is the book's)
    from pdd_engine.runs import book
    assert [r.key for r in book(store).records()] == [d.run_key]


def test_extending_a_run_computes_only_the_new_stage(tiny, store):
    two = done(events(tiny(stages=2, ipc=2), store))
    three = done(events(tiny(stages=3, ipc=3), store))
    assert two.computed_stages == [1, 2] and three.computed_stages == [3]
    assert three.accuracies[:2] == two.accuracies


def test_a_stage_schedule_adds_its_own_images_per_class(tiny, store, tmp_path):
    """stage_ipc 2,1: stage 1 adds 2 images per class, stage 2 one more; the random curriculum and the
    base method alone follow the same counts, the bundle records them, and a P = 1 run at IPC 2 is
    stage 1 of this run (shared from the cache)."""
    from pdd_engine.export import export_bundle, load_bundle
    cfg = tiny(stages=2, ipc=3, stage_ipc="2,1", compare_base="final")
    evs = events(cfg, store)
    imgs = [e for e in evs if isinstance(e, E.StageImages)]
    assert [int((e.labels == 0).sum()) for e in imgs] == [2, 3] and [int(e.new.sum()) for e in imgs] == [20, 10]
    scored = [e for e in evs if isinstance(e, E.StageEvaluated)]
    assert [e.images_per_class for e in scored] == [2, 3] and scored[-1].base_acc is not None
    manifest = load_bundle(export_bundle(cfg, tmp_path / "run.zip", store)).manifest
    assert [(s["images_per_class"], s["cumulative_images_per_class"]) for s in manifest["stage_entries"]] == [(2, 2), (3 - 2, 3)]
    assert done(events(tiny(stages=1, ipc=2), store)).computed_stages == []


class StopAtStage:
    def __init__(self, stage):
        self.stage, self.seen = stage, False

    def is_set(self):
        return self.seen


def test_stopped_run_keeps_finished_stages_and_resumes(tiny, store):
    token = StopAtStage(2)
    evs = []
    for ev in run(tiny(stages=3, ipc=3), store, token):
        evs.append(ev)
        if isinstance(ev, E.Progress) and ev.stage == 2:
            token.seen = True
    assert isinstance(evs[-1], E.Stopped) and evs[-1].stage == 2
    resumed = done(events(tiny(stages=3, ipc=3), store))
    assert resumed.computed_stages == [2, 3]


def test_failures_are_one_line_events_not_exceptions(tiny, store):
    ev = events(tiny(method="mtt", max_memory_gb=1e-6), store)[-1]
    assert isinstance(ev, E.Failed) and "needs about" in ev.message and "Fix:" in ev.message
    ev = events(tiny(lr_img=1e30), store)[-1]
    assert isinstance(ev, E.Failed) and "loss became" in ev.message
    ev = events(tiny(ipc=400, stages=1, iterations=1), store)[-1]
    assert isinstance(ev, E.Failed) and "fewer real images" in ev.message


def test_mtt_learns_step_size_and_experts_are_cached(tiny, store):
    d = events(tiny(method="mtt"), store)
    lrs = [e.learned_lr for e in d if isinstance(e, E.StageFinished)]
    assert all(lr is not None and lr > 0 for lr in lrs) and lrs[0] != 0.01
    assert sum(1 for _ in store.keys("memo:experts:")) == 2  # one set of trajectories per stage prefix


def test_a_slice_runs_its_stages_without_finishing_the_run(tiny, store):
    """run(cfg, until=1): stage 1 and nothing after; no Done and no run record; the full run then
    computes only stage 2."""
    cfg = tiny()
    part = list(run(cfg, store, until=1))
    assert isinstance(part[-1], E.StageFinished) and part[-1].stage == 1
    assert not any(isinstance(e, E.Done) for e in part) and not list(store.keys("run:"))
    assert done(events(cfg, store)).computed_stages == [2]
    from pdd_engine.errors import PDDError
    import pytest
    with pytest.raises(PDDError, match="until=3 is not a stage"):
        list(run(cfg, store, until=3))


@pytest.mark.parametrize("together", [False, True])
def test_set_up_reports_stream_while_the_set_up_runs(tiny, store, together):
    """MTT's experts are trained in set-up: "expert 1/2 trained" must reach the front end while they
    train (before the trajectories are stored), not after the whole set-up; experts trained together
    (one unit) report once, when the unit is done. The last report and the store's write follow each
    other at once in two threads, so only the count before it is asserted (it was a race under load)."""
    seen = []
    for ev in run(tiny(method="mtt", stages=1, batched_experts=together), store):
        if isinstance(ev, E.Message) and ev.text.startswith("expert"):
            seen.append((ev.text, sum(1 for _ in store.keys("memo:experts:"))))
    assert [text for text, _ in seen] == ([] if together else ["expert 1/2 trained"]) + ["expert 2/2 trained"]
    assert together or seen[0][1] == 0  # expert 1's report arrived while expert 2 still trained


def test_a_failure_in_set_up_is_a_failed_event(tiny, store, monkeypatch):
    from pdd_engine.methods.mtt import MTT

    def broken(self):
        self.ctx.report("about to fail")
        raise RuntimeError("boom in set-up")
    monkeypatch.setattr(MTT, "setup", broken)
    evs = events(tiny(method="mtt"), store)
    assert any(isinstance(e, E.Message) and e.text == "about to fail" for e in evs)
    assert isinstance(evs[-1], E.Failed) and "boom in set-up" in evs[-1].detail


def test_easy_example_filter_drops_only_easy_examples(tiny, store, digits):
    from pdd_engine.progressive import filter_easy
    cfg = tiny(keep_easy=0.0, filter_models=2, eval_epochs=40)
    keep = torch.ones(len(digits.y_train), dtype=torch.bool)
    x, y = digits.x_train[::20], digits.y_train[::20]
    new = filter_easy(digits, x, y, keep, cfg, 1, torch.device("cpu"))
    again = filter_easy(digits, x, y, keep, cfg, 1, torch.device("cpu"))
    assert torch.equal(new, again) and 0 < new.sum() < len(keep)
    # with keep rate 0, exactly the examples that all scorers classify correctly are removed
    from pdd_engine.evaluate import Curriculum, EvalProtocol
    from pdd_engine.training import predict, seed_of
    proto = EvalProtocol.from_config(cfg, digits.size)
    proto = EvalProtocol(**{**proto.to_dict(), "models": 2, "seed": seed_of(cfg.seed, 31, 1)})
    cur = Curriculum(digits, proto, torch.device("cpu"))
    cur.train_stage(x, y)
    easy = torch.ones(len(keep), dtype=torch.bool)
    for net in cur.nets:
        easy &= predict(net, digits.x_train) == digits.y_train
    assert torch.equal(new, ~easy)


def _run_forever(cfg_dict, cache_dir):
    from pdd_engine import DistillConfig
    from pdd_engine.cache import Store
    for _ in run(DistillConfig(**cfg_dict), Store(cache_dir)):
        pass


@pytest.mark.slow
def test_killed_process_resumes_at_first_unfinished_stage(tiny, tmp_path, digits):
    """SIGKILL the engine right after stage 1 is stored; a new run computes only what is missing."""
    import multiprocessing as mp
    import time

    from pdd_engine.cache import Store
    cfg = tiny(stages=3, ipc=3, iterations=200)
    keys = Keys.of(cfg, digits)
    proc = mp.get_context("spawn").Process(target=_run_forever, args=(cfg.to_dict(), str(tmp_path)))
    proc.start()
    store = Store(tmp_path)
    deadline = time.time() + 180
    while keys.stage(1) not in store and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.join()
    finished = [i for i in (1, 2, 3) if keys.stage(i) in store]
    assert 1 in finished and 3 not in finished
    resumed = done(list(run(cfg, store)))
    assert resumed.computed_stages == [i for i in (1, 2, 3) if i not in finished]


def test_auto_augmentation_drops_flip_on_digits_says_so_and_is_the_strategy_typed_out(tiny, store):
    """``auto`` on digits runs without flip, says so once, and is the same run as that strategy typed out
    (one cache entry, one record); the field's strategy on digits is noted once as a mirror; a strategy
    without flip typed out gets neither line."""
    from pdd_engine.strategy import FIELD_STRATEGY
    lines = lambda cfg, word: [e.text for e in events(cfg, store) if isinstance(e, E.Message) and word in e.text]  # noqa: E731
    auto = lines(tiny(stages=1), "auto: without flip")
    assert len(auto) == 1 and "color_crop_cutout_scale_rotate" in auto[0] and FIELD_STRATEGY in auto[0]
    typed = events(tiny(stages=1, dsa_strategy="color_crop_cutout_scale_rotate"), store)
    assert done(typed).computed_stages == []  # auto's stage, from the cache
    assert not [e for e in typed if isinstance(e, E.Message) and "auto: without flip" in e.text]
    assert len(lines(tiny(stages=1, dsa_strategy=FIELD_STRATEGY), "mirrored digit")) == 1
    assert lines(tiny(stages=1, dsa_strategy="color_crop_scale_rotate"), "mirror") == []


def test_a_bfloat16_run_is_its_own_result_and_says_when_bf16_is_emulated(tiny, store, monkeypatch):
    """precision=bfloat16 distils under bf16 autocast: other images than float32's, under other keys, and
    a line in the log where the processor would emulate bf16 (slower than float32) rather than a silent cost."""
    import pdd_engine.device
    monkeypatch.setattr(pdd_engine.device, "has_bf16", lambda device: False)
    cfg16, cfg32 = tiny(stages=1, precision="bfloat16"), tiny(stages=1)
    evs = events(cfg16, store)
    notes = [e.text for e in evs if isinstance(e, E.Message) and "no bf16 arithmetic" in e.text]
    assert len(notes) == 1 and "set precision to float32" in notes[0]
    assert not any(isinstance(e, E.Message) and "no bf16 arithmetic" in e.text for e in events(cfg32, store))
    images = [next(e.images for e in evs_ if isinstance(e, E.StageImages)) for evs_ in (evs, events(cfg32, store))]
    assert (images[0] != images[1]).any()
    assert Keys(cfg16, "f", 8).stage(1) != Keys(cfg32, "f", 8).stage(1)


def test_a_bfloat16_evaluation_keeps_the_images_and_says_when_bf16_is_emulated(tiny, store, monkeypatch, digits):
    """eval_precision=bfloat16 changes the evaluation alone: the same distilled images (stage keys shared, so a
    float32 run's stages are reused), its own accuracies under its own keys, and a log line naming the field
    where the processor would emulate bf16."""
    import pdd_engine.device
    monkeypatch.setattr(pdd_engine.device, "has_bf16", lambda device: False)
    cfg16, cfg32 = tiny(stages=1, eval_precision="bfloat16"), tiny(stages=1)
    evs32 = events(cfg32, store)
    evs16 = events(cfg16, store)
    notes = [e.text for e in evs16 if isinstance(e, E.Message) and "no bf16 arithmetic" in e.text]
    assert len(notes) == 1 and "set eval_precision to float32" in notes[0]
    assert done(evs16).computed_stages == []  # float32's stage 1, from the store
    k16, k32 = Keys(cfg16, "f", 8), Keys(cfg32, "f", 8)
    assert k16.stage(1) == k32.stage(1) and k16.eval(1) != k32.eval(1) and k16.random(1) != k32.random(1)
    w32, w16 = (store.get(Keys.of(c, digits).eval(1))[0] for c in (cfg32, cfg16))  # not a no-op: other weights
    assert w32.keys() == w16.keys() and any(not torch.equal(w32[k], w16[k]) for k in w32 if k.startswith("m"))


def test_auto_arithmetic_is_bf16_only_where_the_processor_has_it_and_the_network_gains(tiny, store, digits, monkeypatch,
                                                                                         tmp_path):
    """precision and eval_precision default to auto: bf16 on a CPU with AVX-512 BF16 or AMX for a network large
    enough to gain from it (digits at width 128; not at width 32, the default run, which ran no faster or slower
    in bf16) and on a CUDA device with bf16 units at any size, float32 elsewhere; the resolved value is what the
    keys, the record and the manifest hold, and the log says why."""
    import pdd_engine.device as D
    from pdd_engine.export import export_bundle, load_bundle

    cfg = tiny(stages=1, width=128)
    assert (cfg.precision, cfg.eval_precision) == ("auto", "auto")
    cpu = torch.device("cpu")
    for flags, want in (({"avx2", "fma"}, "float32"), ({"avx512f", "avx512_bf16"}, "bfloat16"), ({"amx_bf16"}, "bfloat16"),
                        ({"avx512f", "avx512bw"}, "float32")):
        monkeypatch.setattr(D, "cpu_flags", lambda flags=flags: flags)
        assert D.resolve_precision("auto", cpu) == want and D.resolve_precision("float32", cpu) == "float32"
        r = D.resolved(cfg)
        assert (r.precision, r.eval_precision) == (want, want)
        assert Keys.of(cfg, digits).stage(1) == Keys.of(r, digits).stage(1) == Keys(r, digits.fingerprint, 8).stage(1)
        small = D.resolved(tiny(stages=1, width=32))  # 8 px at width 32: float32 on every CPU
        assert (small.precision, small.eval_precision) == ("float32", "float32")
        assert D.resolved(tiny(stages=1, width=32, image_size=16)).precision == want  # 32 x 16^2: at the threshold
        assert D.resolved(tiny(stages=1, dataset="mnist", width=32)).precision == want  # MNIST's 28 px
    for has, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, has=has: has)
        assert D.resolve_precision("auto", torch.device("cuda")) == want
        assert D.resolve_precision("auto", torch.device("cuda"), 1) == want  # a GPU: any size
    monkeypatch.setattr(D, "cpu_flags", lambda: {"amx_bf16"})
    evs = events(tiny(stages=1, width=32), store)
    assert any(isinstance(e, E.Message) and "a network this small runs no faster in bf16" in e.text for e in evs)
    monkeypatch.setattr(D, "cpu_flags", lambda: {"avx2"})
    evs = events(cfg, store)
    started = next(e for e in evs if isinstance(e, E.RunStarted))
    assert started.config["precision"] == started.config["eval_precision"] == "float32"
    assert any(isinstance(e, E.Message) and "auto: no bf16 instructions" in e.text for e in evs)
    m = load_bundle(export_bundle(cfg, tmp_path / "b.zip", store)).manifest
    assert m["config"]["precision"] == m["evaluation"]["precision"] == "float32"
    from pdd_engine.config import PRESETS
    assert all(PRESETS[p]["precision"] == PRESETS[p]["eval_precision"] == "float32" for p in PRESETS if p.startswith("paper"))


def lane_run(cfg, cache, threads, cancel=None):
    """(events, the torch threads after the run) of ``cfg`` run with ``threads`` torch threads."""
    from pdd_engine.cache import Store
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    s = Store(cache)
    try:
        evs = list(run(cfg, s, cancel))
        return evs, torch.get_num_threads()
    finally:
        s.close()
        torch.set_num_threads(before)


def test_the_side_lane_gives_the_numbers_of_a_run_without_it(tiny, tmp_path):
    """At 2 threads the random curriculum and the base comparison run in a second thread, one thread each; the
    run's images and every accuracy equal a 1-thread run's without the lane, and the threads come back."""
    import threading
    cfg = tiny(compare_base="final", compare_epochs=True)
    with_lane, threads_after = lane_run(cfg, tmp_path / "a", 2)
    without, _ = lane_run(cfg, tmp_path / "b", 1)
    assert threads_after == 2 and not any(t.name == "pdd-side-lane" for t in threading.enumerate())
    said = lambda evs: [e.text for e in evs if isinstance(e, E.Message) and "base method alone" in e.text]  # noqa: E731
    assert any("computed beside the stages" in t for t in said(with_lane))
    assert not any("beside" in t for t in said(without))
    assert done(with_lane).accuracies == done(without).accuracies
    imgs = lambda evs: [e.images for e in evs if isinstance(e, E.StageImages)]  # noqa: E731
    assert all((x == y).all() for x, y in zip(imgs(with_lane), imgs(without)))
    kinds = lambda evs: [type(e).__name__ for e in evs if not isinstance(e, E.Message)]  # noqa: E731
    assert kinds(with_lane) == kinds(without)  # the same events in the same order


def test_a_stop_or_failure_ends_the_side_lane_and_gives_the_threads_back(tiny, tmp_path, monkeypatch):
    import threading

    import pdd_engine.progressive as progressive
    from pdd_engine.cache import Store
    lane_alive = lambda: any(t.name == "pdd-side-lane" for t in threading.enumerate())  # noqa: E731
    cfg = tiny(stages=3, ipc=3, compare_base="final", compare_epochs=True)
    token, evs, s = StopAtStage(2), [], Store(tmp_path / "a")
    torch.set_num_threads(2)
    try:
        for ev in run(cfg, s, token):
            evs.append(ev)
            if isinstance(ev, E.Progress) and ev.stage == 2:
                assert torch.get_num_threads() == 1  # the stage loop's half
                token.seen = True
        assert isinstance(evs[-1], E.Stopped) and torch.get_num_threads() == 2 and not lane_alive()
    finally:
        s.close()

    real = progressive.random_subset

    def broken(*a, **k):  # in the lane alone: its failure reaches the stage loop as the run's
        if threading.current_thread().name == "pdd-side-lane":
            raise progressive.PDDError("the random subset broke", "fix the test")
        return real(*a, **k)
    monkeypatch.setattr(progressive, "random_subset", broken)
    evs, threads_after = lane_run(cfg, tmp_path / "b", 2)
    assert isinstance(evs[-1], E.Failed) and "the random subset broke" in evs[-1].message
    assert threads_after == 2 and not lane_alive()


def test_mtt_experts_on_both_lanes_give_a_one_thread_runs_experts(tiny, tmp_path, digits):
    """With a side lane the stage loop trains its experts on both lanes' threads (LocalExecutor workers);
    the trajectories, images and accuracies equal a 1-thread run's, unit by unit."""
    from pdd_engine.cache import Store
    cfg = tiny(method="mtt", num_experts=3, compare_base="final")
    with_lane, _ = lane_run(cfg, tmp_path / "a", 2)
    without, _ = lane_run(cfg, tmp_path / "b", 1)
    assert any(isinstance(e, E.Message) and "expert 3/3 trained" in e.text for e in with_lane)
    assert done(with_lane).accuracies == done(without).accuracies
    keys = Keys.of(cfg, digits)
    for i in (1, 2):
        a, b = (Store(tmp_path / d).get(keys.memo("experts", i))[0]["trajectories"] for d in "ab")
        assert torch.equal(a, b), i


def test_the_side_lane_steps_back_for_the_stage_loop():
    """The lane's thread lowers its own priority (Linux), not the process's."""
    import os
    import threading

    from pdd_engine.progressive import LANE_NICE, yield_to_the_stage_loop
    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priorities on this platform")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []

    def lane():
        yield_to_the_stage_loop()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    t = threading.Thread(target=lane)
    t.start()
    t.join()
    assert seen == [min(19, mine + LANE_NICE)] and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_in_the_base_curriculum_keeps_its_finished_steps(tiny, store, digits, monkeypatch, workers):
    """The base method's P = 1 evaluation and its steps trained as long run as chains of units
    (executor.map_chains); each step is stored once every network has finished it, so a Stop while the
    networks train on as long as PDD's curriculum keeps P = 1's evaluation, and a later run reads it."""
    import threading
    import pdd_engine.progressive as P
    from pdd_engine.errors import Cancelled
    from pdd_engine.evaluate import EvalProtocol
    from pdd_engine.executor import LocalExecutor
    from pdd_engine.records import eval_check

    cfg = P.resolved(tiny(compare_base="final", compare_epochs=True))
    stop, ran, real = threading.Event(), [], P.curriculum_step

    def step(shared, item):  # the Stop comes once every network has finished P = 1's evaluation
        out = real(shared, item)
        ran.append(item[0] is None)  # no state to continue from: P = 1's evaluation
        if sum(ran) == cfg.eval_models:
            stop.set()
        return out
    monkeypatch.setattr(P, "curriculum_step", step)
    engine = P.Engine(cfg, store, stop, LocalExecutor(workers))
    keys = Keys.of(cfg, digits).base(2)
    proto = EvalProtocol.from_config(keys.cfg, digits.size)
    with pytest.raises(Cancelled):
        list(engine.base(digits, Keys.of(cfg, digits), 2, torch.device("cpu")))
    assert store.get(keys.eval(1), eval_check(proto)) is not None
    assert store.get(keys.repeated(2), eval_check(proto)) is None
    ran.clear()
    engine = P.Engine(cfg, store, None, LocalExecutor(workers))
    evs = list(engine.base(digits, Keys.of(cfg, digits), 2, torch.device("cpu")))
    assert any(isinstance(e, E.Message) and "from cache" in e.text for e in evs)
    assert len(ran) == cfg.eval_models  # only the step left: one unit per network


def test_an_unstable_mtt_stage_warns_when_computed_and_again_when_replayed(tiny, store, monkeypatch):
    """The method's health check reads the stage as stored: a computed stage whose matching overshot warns at
    its end, and the same stage replayed from the cache warns again (for the base method alone too)."""
    from pdd_engine.methods import mtt
    warnings = lambda evs: [e.text for e in evs if isinstance(e, E.Message) and "matching was unstable" in e.text]  # noqa: E731
    cfg = tiny(method="mtt", stages=1, iterations=30, lr_img=3000.0)  # its second iteration overshoots (loss 2.1)
    assert warnings(events(cfg, store)) == []  # once is an unlucky draw
    monkeypatch.setattr(mtt, "OVERSHOOTS", 1)
    assert warnings(events(cfg, store)) != []  # replayed: the same history, read with the new rule
    store2 = type(store)(store.directory.parent / "second")
    computed = events(tiny(method="mtt", stages=2, iterations=30, lr_img=3000.0, compare_base="final"), store2)
    found = warnings(computed)
    assert found and found[0].startswith("warning: the trajectory")
    assert any(t.startswith("warning: the base method alone (P=1): the trajectory") for t in found)
    from pdd_engine import runs
    (record,) = runs.book(store2).records()  # the run's record keeps them (pdd runs show, the Runs tab)
    assert record.warnings and record.warnings[0].startswith("stage 1: the trajectory matching was unstable")
    assert any(w.startswith("stage 2: the base method alone (P=1): the trajectory") for w in record.warnings)
    assert type(record).of(record.key, {k: v for k, v in record.to_dict().items() if k != "warnings"} | {
        "accuracies": [vars(st) for st in record.stages]}).warnings == ()  # a record from before them
