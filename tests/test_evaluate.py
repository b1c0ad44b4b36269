import numpy as np
import pytest
import torch

from pdd_engine import events as E
from pdd_engine import run
from pdd_engine.evaluate import (BatchedCurriculum, Curriculum, EvalProtocol, make_curriculum,
                                 random_subset, use_batched)


def test_batched_evaluation_matches_sequential(digits):
    proto = EvalProtocol(epochs=15, models=3, depth=2, width=16)
    x1, y1 = random_subset(digits, 0, 3, seed=0)
    x2, y2 = random_subset(digits, 3, 3, seed=0)
    seq, bat = Curriculum(digits, proto, torch.device("cpu")), BatchedCurriculum(digits, proto, torch.device("cpu"))
    for x, y in ((x1, y1), (torch.cat([x1, x2]), torch.cat([y1, y2]))):
        a, b = seq.train_stage(x, y), bat.train_stage(x, y)
        assert max(abs(u - v) for u, v in zip(a, b)) <= 0.01, (a, b)
    s, t = seq.state(), bat.state()
    assert s.keys() == t.keys()
    # weights agree to float32 summation noise; momentum buffers (sums of gradients) slightly less
    assert all(torch.allclose(s[k].float(), t[k].float(), atol=1e-3 if k.startswith("m") else 1e-2) for k in s)


def test_any_split_of_the_networks_into_units_gives_the_whole_curriculum(digits):
    """Network k depends on k alone: units of one network each (how an executor spreads them) reproduce
    the whole curriculum's accuracies and state exactly, across two stages (state carried)."""
    from pdd_engine.progressive import curriculum_step, networks_of
    proto = EvalProtocol(epochs=4, models=3, depth=2, width=8)
    x, y = random_subset(digits, 0, 3, seed=0)
    whole = Curriculum(digits, proto, torch.device("cpu"))
    shared = {"ds": digits.eval_view, "proto": proto.to_dict(), "device": "cpu", "batched": False}
    state = None
    for stage in (1, 2):
        acc = whole.train_stage(x, y)
        parts = [curriculum_step(shared, (networks_of(state, [k]), x, y, None, [k])) for k in (2, 0, 1)]
        state = {n: t for part, _ in parts for n, t in part.items()}
        by_net = {k: part_acc for k, (_, part_acc) in zip((2, 0, 1), parts)}
        assert [by_net[k][0] for k in range(3)] == acc
        assert state.keys() == whole.state().keys()
        assert all(torch.equal(state[n], t) for n, t in whole.state().items()), stage
    pair = BatchedCurriculum(digits, proto, torch.device("cpu"), ids=[1, 2])  # a vmap group of two of the three
    pair.train_stage(x, y)
    first = Curriculum(digits, proto, torch.device("cpu"))
    assert max(abs(u - v) for u, v in zip(pair.test_accuracy(), first.train_stage(x, y)[1:])) <= 0.01


def test_batched_state_round_trips_into_sequential(digits):
    proto = EvalProtocol(epochs=5, models=2, depth=2, width=8)
    x, y = random_subset(digits, 0, 2, seed=0)
    bat = BatchedCurriculum(digits, proto, torch.device("cpu"))
    bat.train_stage(x, y)
    seq = Curriculum(digits, proto, torch.device("cpu")).load(bat.state())
    again = BatchedCurriculum(digits, proto, torch.device("cpu")).load(seq.state())
    assert all(torch.equal(a, b) for a, b in zip(bat.state().values(), again.state().values()))
    assert isinstance(make_curriculum(digits, EvalProtocol(norm="batch"), torch.device("cpu")), Curriculum)
    assert not isinstance(make_curriculum(digits, EvalProtocol(norm="batch"), torch.device("cpu")), BatchedCurriculum)


def test_a_bfloat16_evaluation_trains_and_tests_in_bf16_and_still_learns(digits):
    """precision=bfloat16 (eval_precision) runs both paths, one network after another and together (vmap),
    under bf16 autocast: other weights than float32's (it is not a no-op), networks that learn as well."""
    x, y = random_subset(digits, 0, 5, seed=0)
    for cls in (Curriculum, BatchedCurriculum):
        out = {}
        for precision in ("float32", "bfloat16"):
            cur = cls(digits, EvalProtocol(epochs=30, models=2, depth=2, width=16, precision=precision), torch.device("cpu"))
            out[precision] = (cur.train_stage(x, y), cur.state())
        (acc32, s32), (acc16, s16) = out["float32"], out["bfloat16"]
        assert any(not torch.equal(s32[k], s16[k]) for k in s32), cls
        assert min(acc16) > 0.3 and abs(sum(acc16) - sum(acc32)) / 2 < 0.05, (cls, acc32, acc16)  # chance: 0.1


def test_mtt_auto_switches_to_bounded_unroll_when_memory_is_tight(tiny, store):
    from pdd_engine.methods.unroll import unroll_memory_bytes
    from pdd_engine.models import ConvNet
    full = unroll_memory_bytes(ConvNet(1, 10, 8, 2, 32), 1, 8, 20, 5)
    cfg = tiny(method="mtt", max_memory_gb=1.5 * full / 2 ** 30)
    evs = list(run(cfg, store))
    assert isinstance(evs[-1], E.Done)
    assert any(isinstance(e, E.Message) and "bounded-memory unroll" in e.text for e in evs)


def test_each_rows_random_baseline_is_p1s_random_subset_split_across_stages(digits):
    """The random curriculum of P = 5 at IPC 10 (2 per stage, or a schedule 4,3,1,1,1) uses exactly
    P = 1's 10 random images per class, disjoint across stages, as many per stage as the stage adds."""
    from pdd_engine import DistillConfig
    from pdd_engine.evaluate import random_subset
    one = DistillConfig(stages=1, ipc=10, seed=3)
    one_x, one_y = random_subset(digits, one.cum_ipc(0), one.ipc_at(1), one.seed)
    for cfg in (DistillConfig(stages=5, ipc=10, seed=3), DistillConfig(stages=5, ipc=10, stage_ipc="4,3,1,1,1", seed=3)):
        parts = [random_subset(digits, cfg.cum_ipc(s - 1), cfg.ipc_at(s), cfg.seed) for s in range(1, 6)]
        assert [len(y) for _, y in parts] == [10 * k for k in cfg.ipcs]
        for c in range(digits.num_classes):
            whole = one_x[one_y == c]
            split = torch.cat([x[y == c] for x, y in parts])
            assert torch.equal(whole, split)
    assert not torch.equal(one_x, random_subset(digits, 0, 10, seed=4)[0])


def test_mtt_memory_refusal_states_sizes_that_are_not_zero(tiny, store):
    """A budget far below the unroll's need is refused with the fix, in units that show the numbers."""
    evs = list(run(tiny(method="mtt", max_memory_gb=1e-4, mtt_unroll="bounded"), store))
    assert isinstance(evs[-1], E.Failed), evs[-1]
    msg = evs[-1].message
    assert "MiB" in msg and "0.0 GiB" not in msg and "0.0 MiB" not in msg and "Fix:" in msg, msg


def test_the_evaluation_path_is_the_one_measured_faster_unless_chosen():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    proto = EvalProtocol(width=32)
    assert not use_batched(None, proto, cpu) and not use_batched(None, EvalProtocol(width=128), cpu)  # bench/speed.py --only eval_widths
    assert use_batched(None, EvalProtocol(width=128), cuda) and use_batched(None, proto, cuda)
    assert use_batched(True, proto, cpu) and not use_batched(False, proto, cuda)  # the user's choice stands
    assert not use_batched(True, EvalProtocol(norm="batch"), cuda) and not use_batched(True, EvalProtocol(models=1), cpu)


def test_after_tune_allocator_freed_tensors_stay_in_the_heap_for_the_next_step():
    """device.tune_allocator (every run calls it): a freed 16 MiB tensor's memory stays in glibc's heap,
    free for the next training step, instead of going back to the kernel to be page-faulted in again."""
    import ctypes
    import sys

    import pytest

    from pdd_engine.device import tune_allocator
    if not sys.platform.startswith("linux"):
        assert tune_allocator() is False
        return
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("a libc without mallinfo2 (glibc < 2.33, or not glibc)")

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    assert tune_allocator() is True
    t = torch.ones(4 * 2 ** 20)  # 16 MiB
    mapped = libc.mallinfo2().hblkhd
    del t
    after = libc.mallinfo2()
    assert after.hblkhd == mapped  # it was never a separate mapping
    assert after.fordblks >= 16 * 2 ** 20  # and its memory is still the heap's, free


def test_the_epoch_matched_base_trains_its_own_images_for_the_curriculums_epochs(tiny, store, digits):
    """compare_epochs: the base method's P = 1 images, trained for stage x eval_epochs with the curriculum's
    optimiser settings (fresh SGD per network, momentum carried, lr x0.1 at half of each stage): exactly
    a hand-rolled loop; cached like any evaluation (a second run computes nothing)."""
    from pdd_engine import distill
    from pdd_engine.keys import Keys
    from pdd_engine.models import build_model
    from pdd_engine.training import accuracy, make_sgd, seed_of, train_epochs

    cfg = tiny(stages=2, ipc=2, compare_base="final", eval_batched=False, eval_epochs=6,
               eval_precision="float32")  # the hand-rolled loop below is float32 (auto is bf16 on some CPUs)
    done = distill(cfg, store)
    last = done.accuracies[-1]
    base = store.get(Keys.of(cfg, digits).base(2).stage(1))[0]
    x, y = base["train_x"], base["train_y"]
    proto = EvalProtocol.from_config(cfg, digits.size)
    hand = []
    for k in range(cfg.eval_models):
        torch.manual_seed(seed_of(cfg.seed, 1000 + k))
        net = build_model(digits.channels, digits.num_classes, digits.size, proto.depth, proto.width, proto.norm)
        opt = make_sgd(net, cfg.eval_lr)
        for stage in (1, 2):  # P x E epochs: the curriculum's two stages, both on the base's own images
            train_epochs(net, x, y, cfg.eval_epochs, opt, cfg.eval_lr, cfg.eval_batch, proto.aug,
                         seed_of(cfg.seed, 2000 + k, stage))
        hand.append(accuracy(net, digits.x_test, digits.y_test))
    assert last["base_epochs_mean"] == pytest.approx(float(np.mean(hand)), abs=1e-9)
    assert last["base_epochs_mean"] != last["base_mean"]  # the test can fail: more epochs move the accuracy
    events = list(run(cfg, store))
    assert events[-1].computed_stages == [] and events[-1].accuracies == done.accuracies
    off = distill(cfg.replace(compare_epochs=False), store).accuracies[-1]
    assert off["base_epochs_mean"] is None and off["base_mean"] == last["base_mean"]


@pytest.mark.parametrize("momentum, decay", [(0.9, 5e-4), (0.5, 0.0), (0.0, 0.0), (0.0, 1e-3)])
def test_sgd_is_torch_optim_sgd(momentum, decay):
    """The engine's SGD (training.SGD, kept to avoid torch.optim's import of the compiler) takes torch's steps
    bitwise: two parameter groups, the learning rate changed between steps as the curriculum's decay does, and a
    momentum buffer read and written through ``state`` the way a curriculum's state saves and loads it."""
    from pdd_engine.training import SGD
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(6)]
    runs = []
    for make in (torch.optim.SGD, SGD):
        ps = [t.clone().requires_grad_() for t in start]
        opt = make([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.3}], lr=0.1, momentum=momentum,
                   weight_decay=decay)
        for step, gs in enumerate(grads):
            if step == 3:
                opt.param_groups[0]["lr"] = 0.01
                if momentum:
                    opt.state[ps[1]]["momentum_buffer"] = opt.state[ps[1]]["momentum_buffer"] * 0.5
            for p, gr in zip(ps, gs):
                p.grad = gr.clone()
            opt.step()
            opt.zero_grad(set_to_none=True)
            assert all(p.grad is None for p in ps)
        runs.append([p.detach() for p in ps])
    for want, got in zip(*runs):
        assert torch.equal(want, got)
