"""Each base method: its gradient is right, it lowers its own loss, and it beats random real data."""

import math
import tempfile

import pytest
import torch

from pdd_engine import DistillConfig, distill
from pdd_engine.augment import DSA
from pdd_engine.cache import Store
from pdd_engine.methods import REGISTRY, get_method
from pdd_engine.methods.unroll import unroll_loss, unroll_memory_bytes
from pdd_engine.models import ConvNet
from pdd_engine.progressive import stage_context



def test_mtt_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = ConvNet(1, 3, 4, depth=1, width=2, norm="instance").double()
    n_params = sum(p.numel() for p in model.parameters())
    start, target = torch.randn(n_params, dtype=torch.double) * 0.3, torch.randn(n_params, dtype=torch.double) * 0.3
    x = torch.randn(6, 1, 4, 4, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    lr = torch.tensor(0.05, dtype=torch.double, requires_grad=True)
    f = lambda x_, lr_: unroll_loss(model, start, target, x_, y, lr_, 3, 4, DSA(["scale", "rotate"]), seed=1)  # noqa: E731
    gx, glr = torch.autograd.grad(f(x, lr), (x, lr))
    eps = 1e-6
    for idx in [(0, 0, 1, 1), (3, 0, 2, 0), (5, 0, 3, 3)]:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[idx] += eps
        xm[idx] -= eps
        fd = (f(xp, lr) - f(xm, lr)) / (2 * eps)
        assert torch.allclose(gx[idx], fd, rtol=1e-4, atol=1e-8), (idx, gx[idx].item(), fd.item())
    fd_lr = (f(x, lr + eps) - f(x, lr - eps)) / (2 * eps)
    assert torch.allclose(glr, fd_lr, rtol=1e-4), (glr.item(), fd_lr.item())


def mean_loss(method, stored, seeds=range(6)):
    """The method's loss at iteration 1 averaged over draws of its own generator (its experts, real batches,
    augmentations), everything else held fixed."""
    total = 0.0
    for s in seeds:
        method.g = torch.Generator().manual_seed(1000 + s)
        total += float(method.loss(stored, 1).detach())
    return total / len(seeds)


@pytest.mark.parametrize("name, extra", [
    ("dm", dict()),
    ("mtt", dict(syn_steps=10, num_experts=3)),
])
@pytest.mark.slow
def test_distilled_beats_random_subset_at_ipc1_over_seeds(name, extra):
    """Real runs on digits (IPC 1, P = 1): the distilled set must beat the random real subset."""
    for seed in range(3):
        cfg = DistillConfig.make(dict(method=name, stages=1, ipc=1, iterations=100, eval_epochs=200, eval_models=2, seed=seed, **extra))
        with tempfile.TemporaryDirectory() as d:
            acc = distill(cfg, Store(d)).accuracies[0]
        assert acc["mean"] > acc["random_mean"] + 0.05, (seed, acc)


def test_memory_estimate_grows_with_steps_and_batch():
    net = ConvNet(1, 10, 8, depth=2, width=32)
    a = unroll_memory_bytes(net, 1, 8, batch=10, syn_steps=10)
    assert unroll_memory_bytes(net, 1, 8, batch=10, syn_steps=20) == 2 * a
    assert unroll_memory_bytes(net, 1, 8, batch=20, syn_steps=10) > a


# what each method needs for its loss to be measured with its randomness held fixed (others: the defaults)
CONTRACT = {"mtt": dict(syn_steps=5, num_experts=2, lr_img=30.0)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_method_keeps_the_contract(name, digits, tiny):
    """The contract of a base method, for every registered one (a new method gets it for free): its stored
    images have the shape of ipc images per class, its loss is finite and falls over twenty steps with
    the randomness held fixed, its decoded training images have the training shape, and changing any of its
    semantic settings changes its stage key."""
    from pdd_engine.keys import Keys
    cfg = tiny(method=name, stages=1, ipc=1, outer_loop=1000, **CONTRACT.get(name, {}))
    spec = get_method(name)
    method = spec(stage_context(cfg, digits))
    method.setup()
    stored = torch.nn.Parameter(method.init_images())
    assert stored.shape == (digits.num_classes, digits.channels, digits.size, digits.size)
    x, y = method.decode(stored.detach())
    assert len(x) == len(y) == digits.num_classes * spec.images_per_stored(cfg, digits.size)
    assert x.shape[1:] == stored.shape[1:] and set(y.tolist()) == set(range(digits.num_classes))
    method.loss(stored, 0)  # the first iteration draws what later ones reuse (outer_loop keeps the network)
    before = mean_loss(method, stored.detach())
    assert math.isfinite(before)
    groups = [{"params": [stored], "lr": cfg.effective_lr_img}] + [{"params": [p], "lr": lr} for p, lr in method.extra_params()]
    opt = torch.optim.SGD(groups, momentum=0.5)
    for it in range(1, 20):
        loss = method.loss(stored, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_loss(method, stored.detach())
    assert after < 0.8 * before, (before, after)
    key = Keys(cfg, "f" * 16, digits.size).stage(1)
    for field, value in cfg.params.semantic().items():
        other = (not value if isinstance(value, bool) else value + 1 if isinstance(value, int)
                 else value * 2 if isinstance(value, float) else None)
        if other is not None:
            assert Keys(cfg.replace(**{field: other}), "f" * 16, digits.size).stage(1) != key, field


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dc", "dsa", "idc"])
def test_gradient_matching_beats_random_at_ipc1(name):
    for seed in range(2):
        cfg = DistillConfig(method=name, stages=1, ipc=1, iterations=100, eval_epochs=200, eval_models=2, seed=seed)
        with tempfile.TemporaryDirectory() as d:
            acc = distill(cfg, Store(d)).accuracies[0]
        assert acc["mean"] > acc["random_mean"] + 0.05, (seed, acc)


def test_idc_decode_shapes_and_mosaic_init(digits, tiny):
    from pdd_engine.methods.gradmatch import IDC
    m = IDC(stage_context(tiny(method="idc", stages=1, ipc=2, idc_factor=2), digits))
    stored = m.init_images()
    assert stored.shape == (20, 1, 8, 8)
    x, y = m.decode(stored)
    assert x.shape == (80, 1, 8, 8) and y.tolist() == [c for c in range(10) for _ in range(8)]
    # the top-left tile of the first stored image decodes to the first training image
    tile = torch.nn.functional.interpolate(stored[:1, :, :4, :4], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(x[:1], tile)
    bad = IDC(stage_context(tiny(method="idc", stages=1, ipc=1, idc_factor=3), digits))
    with pytest.raises(Exception, match="does not divide"):
        bad.setup()


def test_idc_clamp_keeps_every_pixel_a_camera_could_take(digits, tiny):
    """With ``idc_clamp`` (IDC's reference), no stored pixel leaves [0, 1] after any update; without it, the same
    large steps push pixels past black or white; either way the mosaics' shape and labels are IDC's."""
    from pdd_engine.keys import Keys
    from pdd_engine.methods.gradmatch import IDC

    def pixels(clamp: bool) -> torch.Tensor:
        cfg = tiny(method="idc", stages=1, ipc=2, idc_factor=2, lr_img=50.0, idc_clamp=clamp)
        with tempfile.TemporaryDirectory() as d:
            store = Store(d)
            distill(cfg, store)
            tensors, _ = store.get(Keys.of(cfg, digits).stage(1))
            store.close()
        mean, std = torch.tensor(digits.mean).view(1, -1, 1, 1), torch.tensor(digits.std).view(1, -1, 1, 1)
        return tensors["stored"] * std + mean

    free, kept = pixels(False), pixels(True)
    assert free.min() < -0.01 or free.max() > 1.01, (free.min(), free.max())
    assert kept.min() >= -1e-5 and kept.max() <= 1 + 1e-5, (kept.min(), kept.max())
    assert kept.shape == free.shape == (20, 1, 8, 8)
    # off, the setting enters no key: IDC runs from before it keep their cache; on, it is its own run
    assert "idc_clamp" not in IDC.key_params(tiny(method="idc"), 8)
    assert IDC.key_params(tiny(method="idc", idc_clamp=True), 8)["idc_clamp"] is True


def test_clamp_pixels_clips_through_the_whitening_and_keeps_valid_images(digits):
    from dataclasses import replace
    from pdd_engine.data import ZCA
    x = digits.x_train[:16]
    for ds in (digits, replace(digits, zca=ZCA.fit(digits.x_train))):
        real = ds.zca.apply(x) if ds.zca is not None else x
        assert torch.allclose(ds.clamp_pixels(real), real, atol=1e-4)  # real images are in range already
        pushed = ds.clamp_pixels(real * 5)
        unit = ds.zca.undo(pushed) if ds.zca is not None else pushed
        mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
        pix = unit * std + mean
        assert pix.min() >= -1e-4 and pix.max() <= 1 + 1e-4


def test_bounded_unroll_matches_full_unroll_value_and_gradients():
    from pdd_engine.methods.unroll import unroll_loss_bounded
    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, depth=2, width=4, norm="instance").double()
    n_params = sum(p.numel() for p in model.parameters())
    start, target = torch.randn(n_params, dtype=torch.double) * 0.3, torch.randn(n_params, dtype=torch.double) * 0.3
    y = torch.tensor([0, 1, 2] * 3)
    aug = DSA(["crop", "scale", "color"])
    grads = []
    for fn in (unroll_loss, unroll_loss_bounded):
        x = torch.randn(9, 1, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        lr = torch.tensor(0.05, dtype=torch.double, requires_grad=True)
        loss = fn(model, start, target, x, y, lr, 6, 5, aug, 3)
        loss.backward()
        grads.append((loss.detach(), x.grad.clone(), lr.grad.clone()))
    (l1, gx1, glr1), (l2, gx2, glr2) = grads
    assert torch.allclose(l1, l2, rtol=1e-10)
    assert torch.allclose(gx1, gx2, rtol=1e-8, atol=1e-12) and torch.allclose(glr1, glr2, rtol=1e-8)


def test_bounded_memory_estimate_does_not_grow_with_steps():
    net = ConvNet(1, 10, 8, depth=2, width=32)
    n_params = sum(p.numel() for p in net.parameters())
    one = unroll_memory_bytes(net, 1, 8, batch=100, syn_steps=1, checkpoints=10)
    many = unroll_memory_bytes(net, 1, 8, batch=100, syn_steps=1, checkpoints=80)
    full = unroll_memory_bytes(net, 1, 8, batch=100, syn_steps=80)
    assert many - one == 70 * n_params * 4  # only the parameter checkpoints grow, not activations
    assert full > 40 * one


def test_idc_factor_follows_input_size_unless_set(digits, tiny):
    """Factor 2 on 8x8 inputs makes 4x4 tiles that carry too little: auto is 1 below 16 px, else 2."""
    from pdd_engine.methods.gradmatch import IDC
    assert [IDC.factor_for(DistillConfig(method="idc"), s) for s in (8, 15, 16, 28, 32)] == [1, 1, 2, 2, 2]
    assert IDC.factor_for(DistillConfig.make(dict(method="idc", idc_factor=2)), 8) == 2
    m = IDC(stage_context(tiny(method="idc", stages=1, ipc=2), digits))
    assert m.factor == 1 and m.decode(m.init_images())[0].shape == (20, 1, 8, 8)


def test_mtt_student_never_takes_more_steps_than_its_expert(digits, tiny):
    """On digits an expert takes 2 epochs x 6 batches = 12 steps: the default student takes no more,
    and a user setting above that is warned about, with the fix."""
    from pdd_engine.methods.mtt import MTT, expert_steps
    n_real = len(digits.y_train)
    assert expert_steps(DistillConfig(method="mtt").params, n_real) == 2 * -(-n_real // 256) == 12
    msgs = []
    cfg = tiny(method="mtt", stages=1, ipc=1, syn_steps=None, expert_epochs=2)
    m = MTT(stage_context(cfg, digits, report=msgs.append))
    m.setup()
    assert m.syn_steps == 12 and not any("warning" in t for t in msgs)
    msgs.clear()
    m = MTT(stage_context(cfg.replace(syn_steps=30), digits, report=msgs.append))
    m.setup()
    assert m.syn_steps == 30
    warning = next(t for t in msgs if t.startswith("warning"))
    assert "syn_steps 30 is more than the 12 steps" in warning and "Fix: set syn_steps to 12 or less" in warning


def test_experts_trained_together_equal_experts_trained_one_by_one(digits, tiny):
    """A later stage's experts (each starts from its own transition over U_1) trained together in one
    vmap unit follow the trajectories of the same experts trained one at a time, in any grouping."""
    from pdd_engine.evaluate import random_subset
    from pdd_engine.methods.mtt import train_experts
    cfg = tiny(method="mtt", stages=2, ipc=2, width=8, max_start_epoch=2, expert_epochs=1, transition_epochs=2,
               expert_lr=0.1)
    frozen_x, frozen_y = random_subset(digits, 0, 2, seed=0)
    shared = {"cfg": cfg, "stage": 2, "device": "cpu", "shape": (digits.channels, digits.num_classes, digits.size),
              "x": digits.x_train, "y": digits.y_train, "idx": torch.arange(600),
              "frozen_x": frozen_x, "frozen_y": frozen_y, "lrs": [0.01], "sizes": [len(frozen_x)]}
    alone = torch.cat([train_experts(shared, [e]) for e in range(3)])
    together = torch.cat([train_experts(shared, [0, 2]), train_experts(shared, [1])])[[0, 2, 1]]
    assert alone.shape == together.shape == (3, 4, alone.shape[-1])
    torch.testing.assert_close(together[:, 0], alone[:, 0], atol=1e-5, rtol=1e-4)  # the same starts (transition included)
    assert (alone[:, -1] - alone[:, 0]).abs().max() > 0.05  # the experts moved: the comparison can fail
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-3)


def test_chain_transition_reproduces_a_hand_rolled_chain(digits, tiny):
    """theta_2 = train(train(theta_0, U_1), U_2): each stage at its own lr with a fresh SGD; "fresh"
    trains a new network on U_2 alone."""
    from pdd_engine.evaluate import random_subset
    from pdd_engine.progressive import Union
    from pdd_engine.training import make_sgd, seed_of, train_epochs
    cfg = tiny(stages=3, ipc=3, transition_epochs=3, width=8)
    union = Union.empty(digits, torch.device("cpu"))
    for stage, lr in ((1, 0.02), (2, 0.005)):
        x, y = random_subset(digits, stage - 1, 1, 0)
        union.add({"train_x": x, "train_y": y, "stored": x, "real_keep": union.keep}, lr)
    ctx = stage_context(cfg, digits, 3, union=union)
    got = ctx.transition(ctx.new_model(5), 5)
    want = ctx.new_model(5)
    for j, (end, lr) in enumerate(((10, 0.02), (20, 0.005))):
        train_epochs(want, union.x[:end], union.y[:end], 3, make_sgd(want, lr), lr, cfg.eval_batch, ctx.aug, seed_of(5, j))
    for a, b in zip(got.parameters(), want.parameters()):
        assert torch.equal(a, b)
    fresh_ctx = stage_context(cfg.replace(transition="fresh"), digits, 3, union=union)
    fresh = fresh_ctx.transition(fresh_ctx.new_model(5), 5)
    once = ctx.new_model(5)
    train_epochs(once, union.x, union.y, 3, make_sgd(once, 0.005), 0.005, cfg.eval_batch, ctx.aug, seed_of(5, 0))
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), once.parameters()))
    assert not torch.equal(next(fresh.parameters()), next(got.parameters()))


def test_networks_transitioned_together_equal_networks_transitioned_one_by_one(digits, tiny):
    """DM's pool (and MTT's experts) bring many networks through the chain at once (vmap): each keeps
    its own seed's minibatches and augmentation, so each is its one-by-one network up to rounding."""
    from pdd_engine.evaluate import random_subset
    from pdd_engine.progressive import Union
    union = Union.empty(digits, torch.device("cpu"))
    for stage, lr in ((1, 0.02), (2, 0.005)):
        x, y = random_subset(digits, stage - 1, 1, 0)
        union.add({"train_x": x, "train_y": y, "stored": x, "real_keep": union.keep}, lr)
    ctx = stage_context(tiny(stages=3, ipc=3, transition_epochs=3, width=8), digits, 3, union=union)
    seeds = [5, 9, 11]
    together, alone = ctx.transitioned(seeds, together=True), ctx.transitioned(seeds, together=False)
    start = ctx.new_model(9)
    for a, b in zip(together, alone):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    assert (next(alone[1].parameters()) - next(start.parameters())).abs().max() > 1e-3  # they moved: it can fail
    assert not torch.equal(next(alone[0].parameters()), next(alone[1].parameters()))  # each its own seed


def test_networks_transitioned_as_units_are_the_one_by_one_networks(digits, tiny):
    """One after another, the pool's networks are independent units on the run's executor (two workers in a
    run with a side lane): each is, to the bit, the network ``transition`` gives its seed in place."""
    from pdd_engine.evaluate import random_subset
    from pdd_engine.executor import LocalExecutor
    from pdd_engine.progressive import Union
    union = Union.empty(digits, torch.device("cpu"))
    x, y = random_subset(digits, 0, 2, 0)
    union.add({"train_x": x, "train_y": y, "stored": x, "real_keep": union.keep}, 0.01)
    ctx = stage_context(tiny(stages=2, ipc=2, transition_epochs=2, width=8), digits, 2, union=union,
                        executor=LocalExecutor(2))
    seeds = [3, 4, 7]
    units = ctx.transitioned(seeds, together=False)
    for seed, net in zip(seeds, units):
        ref = ctx.transition(ctx.new_model(seed), seed)
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref.parameters())), seed
    assert not torch.equal(next(units[0].parameters()), next(ctx.new_model(3).parameters()))  # trained: it can fail


def test_dm_draws_a_fresh_network_every_iteration_at_stage_one(digits, tiny):
    from pdd_engine.methods.dm import DM
    m = DM(stage_context(tiny(stages=1, ipc=1), digits))
    m.setup()
    assert m.pool == []  # stage 1: no pool; loss() builds a new random network per iteration
    stored = m.init_images()
    m.g = torch.Generator().manual_seed(0)
    a = m.loss(stored, 0)
    m.g = torch.Generator().manual_seed(0)
    assert not torch.equal(a, m.loss(stored, 1))  # same batch draws, another network


def test_dm_loss_equals_the_references_per_class_loop(digits, tiny):
    """All classes in one pass (class_means) is the reference's loop over classes, draw for draw: each
    class's real batch, then its own siamese augmentation of real and synthetic images, then the squared
    distance of the two mean embeddings, summed. Uneven classes, like a union of stages, included."""
    from pdd_engine.methods.dm import DM
    from pdd_engine.training import draw_seed
    m = DM(stage_context(tiny(stages=1, ipc=3), digits))
    m.setup()
    stored = m.init_images()
    x, y = m.union(stored)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[(y == 2).nonzero()[0]] = False  # class 2 has one image fewer
    x, y = x[keep], y[keep]
    net = m.ctx.new_model(4).requires_grad_(False)
    g = torch.Generator().manual_seed(7)
    loop = x.new_zeros(())
    for c in range(digits.num_classes):
        real = m.ctx.real_batch(c, m.ctx.cfg.params.batch_real, g)
        seed = draw_seed(g)
        real_mean = net.embed(m.ctx.aug(real, seed)).mean(0)
        loop = loop + ((real_mean - net.embed(m.ctx.aug(x[y == c], seed)).mean(0)) ** 2).sum()
    m.g = torch.Generator().manual_seed(7)
    m.union = lambda _: (x, y)
    m.ctx.new_model = lambda _: net
    batched = m.loss(stored, 0)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
    assert float(loop) > 1e-3  # a real loss: the comparison can fail


def test_bfloat16_matching_follows_the_weights_after_every_step(digits):
    """The bf16 context may span optimiser steps: each forward casts the weights as they are now (autocast's
    weight cache would serve the first step's copies, and networks trained under it end at chance)."""
    from pdd_engine.device import arithmetic
    torch.manual_seed(0)
    net, x = ConvNet(1, 10, 8, depth=2, width=16), digits.x_train[:32]
    with arithmetic("bfloat16", torch.device("cpu")):
        before = net(x).float()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(-1.5)
        after = net(x).float()
    exact = net(x)
    assert after.dtype == torch.float32 and (after - exact).abs().max() < 0.05 * exact.abs().max()
    assert (after - before).abs().max() > 0.5 * exact.abs().max()


@pytest.mark.parametrize("name", ["dm", "mtt"])
def test_bfloat16_loss_is_the_float32_loss_up_to_bf16_rounding(name, digits, tiny):
    """precision=bfloat16 runs the same loss in bf16 arithmetic: close to float32, not identical."""
    from pdd_engine.device import arithmetic
    cfg = tiny(method=name, stages=1, ipc=2, width=32, **CONTRACT.get(name, {}))
    method = get_method(name)(stage_context(cfg, digits))
    method.setup()
    stored = method.init_images()
    losses = []
    for precision in ("float32", "bfloat16"):
        with arithmetic(precision, torch.device("cpu")):
            losses.append(mean_loss(method, stored, seeds=range(3)))
    assert losses[0] != losses[1] and abs(losses[1] - losses[0]) < 0.05 * losses[0], losses


def test_mtt_warns_when_the_student_overshoots_its_expert_repeatedly():
    """MTT's loss above 1 means the student ended farther from the expert's target than it started. The
    recorded histories of MNIST at lr_img 100 had four such iterations in the seed whose images were far
    worse, at most one in every stable stage: three or more warn, naming how often, the worst and the fix."""
    from pdd_engine.methods.mtt import OVERSHOOTS, overshoot_warning
    stable = [[i, 0.6 - i / 400] for i in range(0, 200, 2)]
    one_unlucky = [[i, 1.08 if i == 150 else v] for i, v in stable]
    assert overshoot_warning(stable, 100) is None and overshoot_warning(one_unlucky, 100) is None
    unstable = [[i, [1.29, 1.98, 1.1, 1.05][i // 40] if i % 40 == 0 and i < 160 else v] for i, v in stable]
    assert sum(v > 1 for _, v in unstable) == 4 >= OVERSHOOTS
    text = overshoot_warning(unstable, 100)
    assert text.startswith("warning:") and "4 of 100 recorded iterations" in text and "1.98" in text
    assert "lower lr_img (now 100" in text and "--lr-img" in text
    assert get_method("mtt").health(DistillConfig(method="mtt"), unstable, 0.01) == text
    assert get_method("dm").health(DistillConfig(method="dm"), unstable, 0.01) is None  # a loss of another scale
