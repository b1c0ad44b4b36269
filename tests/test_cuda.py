"""The engine on a CUDA GPU: what must hold there that CPU runs cannot show.

Marked ``cuda`` and skipped where no GPU is present (CI); ``bench/gpu_check.sh`` runs them on a GPU
(``pytest -m cuda``). Each compares the GPU against the CPU path it must agree with.
"""

import pytest
import torch

from pdd_engine import events as E
from pdd_engine import run
from pdd_engine.augment import DSA
from pdd_engine.evaluate import BatchedCurriculum, Curriculum, EvalProtocol, random_subset
from pdd_engine.keys import Keys
from pdd_engine.models import ConvNet

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]
GPU = torch.device("cuda")


def test_siamese_augmentation_is_the_same_transform_on_gpu_and_cpu():
    x = torch.rand(12, 3, 16, 16)
    for op in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        cpu = DSA([op])(x, 7)
        gpu = DSA([op])(x.to(GPU), 7).cpu()
        assert torch.allclose(cpu, gpu, atol=1e-5), op


@pytest.mark.parametrize("method", ["dm", "mtt", "dsa", "idc"])
def test_a_run_on_gpu_caches_cpu_tensors_that_a_cpu_run_reuses(method, tiny, store, digits):
    """Stage records hold CPU tensors whatever device made them, so a CPU process (the studio's
    web process, a CPU-only machine sharing the cache) reads them; accuracies are real numbers."""
    cfg = tiny(method=method, device="cuda")
    evs = list(run(cfg, store))
    assert isinstance(evs[-1], E.Done), evs[-1]
    for s in (1, 2):
        record, _ = store.get(Keys.of(cfg, digits).stage(s))
        assert record["stored"].device.type == "cpu" and torch.isfinite(record["stored"]).all()
    scored = [e for e in evs if isinstance(e, E.StageEvaluated)]
    assert len(scored) == 2 and all(0.0 < a <= 1.0 for e in scored for a in e.acc + e.random_acc)
    again = list(run(cfg.replace(device="cpu"), store))
    assert isinstance(again[-1], E.Done) and again[-1].computed_stages == []


def test_batched_evaluation_matches_sequential_on_gpu(digits):
    x, y = random_subset(digits, 0, 2, 0)
    proto = EvalProtocol(epochs=20, models=3, depth=2, width=16)
    seq = Curriculum(digits, proto, GPU).train_stage(x, y)
    bat = BatchedCurriculum(digits, proto, GPU).train_stage(x, y)
    assert max(abs(a - b) for a, b in zip(seq, bat)) <= 0.02


def test_bounded_unroll_matches_full_unroll_on_gpu():
    from pdd_engine.methods.unroll import unroll_loss, unroll_loss_bounded
    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, depth=2, width=8).to(GPU)
    n = sum(p.numel() for p in model.parameters())
    start, target = torch.randn(n, device=GPU) * 0.3, torch.randn(n, device=GPU) * 0.3
    y = torch.tensor([0, 1, 2] * 3, device=GPU)
    out = []
    for fn in (unroll_loss, unroll_loss_bounded):
        x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(GPU).requires_grad_(True)
        lr = torch.tensor(0.05, device=GPU, requires_grad=True)
        loss = fn(model, start, target, x, y, lr, 6, 5, DSA(["crop", "color"]), 3)
        loss.backward()
        out.append((loss.detach(), x.grad, lr.grad))
    (l1, gx1, glr1), (l2, gx2, glr2) = out
    assert torch.allclose(l1, l2, rtol=1e-4)
    assert torch.allclose(gx1, gx2, rtol=1e-3, atol=1e-6) and torch.allclose(glr1, glr2, rtol=1e-3)
