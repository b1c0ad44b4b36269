import numpy as np
import pytest
import torch

from pdd_engine import data as D
from pdd_engine.augment import DSA
from pdd_engine.datasets.formats import read_idx
from pdd_engine.errors import DataUnavailable
from pdd_engine.evaluate import parse_arch
from pdd_engine.models import ConvNet, build_model


def test_digits_split_is_deterministic_stratified_and_normalised(digits):
    again = D.load_dataset("digits")
    assert torch.equal(digits.x_train, again.x_train) and digits.fingerprint == again.fingerprint
    assert digits.x_train.shape[1:] == (1, 8, 8) and len(digits.y_train) + len(digits.y_test) == 1797
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40
    assert abs(digits.x_train.mean().item()) < 1e-4 and abs(digits.x_train.std().item() - 1) < 0.05
    unit = digits.to_unit(digits.x_train[:5])
    assert unit.min() >= 0 and unit.max() <= 1


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_mnist_from_local_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = D.load_dataset("mnist", data_root=str(tmp_path))
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.num_classes == 10 and "IDX files" in ds.source


def test_truncated_idx_is_reported(tmp_path):
    (tmp_path / "bad").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DataUnavailable, match="truncated"):
        read_idx(tmp_path / "bad")


def offline(monkeypatch):
    import torchvision

    def refuse(*a, **k):
        raise OSError("no network")
    for name in ("MNIST", "CIFAR10"):
        monkeypatch.setattr(torchvision.datasets, name, refuse)


def test_missing_data_names_the_offline_alternatives(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataUnavailable) as e:
        D.load_dataset("cifar10", data_root=str(tmp_path))
    assert "digits" in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(DataUnavailable, match="fetch mnist"):
        D.load_dataset("mnist", data_root=str(tmp_path / "empty"))


def test_zca_round_trip():
    x = torch.rand(200, 1, 4, 4)
    z = D.ZCA.fit(x)
    assert torch.allclose(z.undo(z.apply(x)), x, atol=1e-4)


@pytest.mark.parametrize("size, depth", [(8, 2), (8, 3), (28, 3), (32, 4), (64, 4)])
def test_convnet_fits_any_size(size, depth):
    net = ConvNet(3, 7, size, depth=depth, width=16)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("channels, size, depth, padding, features", [
    (1, 28, 3, 3, 128 * 4 * 4),  # MNIST: 32 -> 16 -> 8 -> 4, the reference's 2048 features
    (3, 32, 3, 1, 128 * 4 * 4),  # CIFAR: 32 -> 16 -> 8 -> 4
    (1, 8, 2, 1, 128 * 2 * 2),  # digits: 8 -> 4 -> 2 (not padded to 12: see models.first_padding)
    (1, 32, 3, 1, 128 * 4 * 4)])
def test_convnet_is_the_reference_network_on_28_px_one_channel_inputs(channels, size, depth, padding, features):
    """The reference ConvNet pads MNIST's 28 px to 32 in its first convolution (padding 3), so the feature
    maps and the embedding are CIFAR's; without it they were 28 -> 14 -> 7 -> 3 (1,152 features)."""
    net = ConvNet(channels, 10, size, depth=depth, width=128)
    assert net.features[0].padding == (padding, padding)
    assert all(m.padding == (1, 1) for m in net.features[1:] if isinstance(m, torch.nn.Conv2d))
    assert net.embed_dim == features == net.embed(torch.randn(2, channels, size, size)).shape[1]


@pytest.mark.parametrize("size", [32, 7, 2])
def test_pool2_is_avg_pool2d_in_value_gradient_and_under_vmap(size):
    """models.Pool2 (strided additions on a CPU, measured faster) gives avg_pool2d's outputs and gradients,
    odd sizes included (the last row and column dropped), and works inside vmap (batched evaluation)."""
    from pdd_engine.models import Pool2
    x = torch.randn(3, 4, size, size, requires_grad=True)
    w = torch.randn(3, 4, size // 2, size // 2)
    grads = []
    for pool in (Pool2(), torch.nn.AvgPool2d(2)):
        x.grad = None
        out = pool(x)
        (out * w).sum().backward()
        grads.append((out.detach(), x.grad.clone()))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)
    batched = torch.func.vmap(Pool2())(x.detach().unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(batched, torch.nn.functional.avg_pool2d(x.detach(), 2))


@pytest.mark.parametrize("norm", ["instance", "none", "batch"])
def test_chunked_convnet_gives_the_unchunked_outputs_and_gradients(norm):
    """On a CPU a ConvNet runs big batches in cache-sized chunks (models.CHUNK_BYTES); per-sample norms
    make that exact up to float rounding, and batch norm (whose statistics span the batch) is never chunked."""
    torch.manual_seed(0)
    net = ConvNet(1, 10, 28, depth=3, width=16, norm=norm)
    x = torch.randn(70, 1, 28, 28, requires_grad=True)
    y = torch.arange(70) % 10
    net.chunk_bytes = net.first_bytes * 4 * 8  # 8 images per chunk
    assert net.chunk_size(x) == (70 if norm == "batch" else 8)
    results = []
    for chunk_bytes in (net.chunk_bytes, None):
        net.chunk_bytes = chunk_bytes
        net.zero_grad()
        x.grad = None
        out = net(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        results.append((out.detach(), x.grad.clone(), net.features[0].weight.grad.clone()))
    for chunked, whole in zip(*results):
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["convnet", "resnet"])
def test_a_one_channel_batch_with_channels_last_strides_runs_row_major(family):
    """The digits come out of numpy with strides (64, 1, 8, 1), channels-last to torch; the network must
    still run its layers row-major (instance norm's channels-last kernel was 10x slower), with the same
    outputs and gradients as for a row-major copy of the batch."""
    net = build_model(1, 10, 8, depth=2, width=16, family=family, seed=0)
    seen = []
    norm = net.features[1] if family == "convnet" else net.stem[1]
    norm.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    odd = torch.randn(12, 8, 8, 1).permute(0, 3, 1, 2)  # numpy's HWC -> CHW view
    rows = torch.empty(12, 1, 8, 8).copy_(odd)
    assert odd.stride() == (64, 1, 8, 1) and odd.is_contiguous() and rows.stride() == (64, 64, 8, 1)
    results = []
    for x in (odd.requires_grad_(), rows.requires_grad_()):
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone()))
    assert seen == [True, True]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_chunks_are_sized_in_the_arithmetic_the_convolutions_run_in():
    """Under CPU bf16 autocast the activations are 2-byte, so a chunk holds twice the images of float32."""
    net = ConvNet(1, 10, 28, depth=3, width=16)
    net.chunk_bytes = net.first_bytes * 4 * 8  # 8 float32 images
    x = torch.randn(70, 1, 28, 28)
    assert net.chunk_size(x) == 8
    with torch.autocast("cpu", torch.bfloat16):
        assert net.chunk_size(x) == 16
    with torch.autocast("cpu", torch.float16):
        assert net.chunk_size(x) == 8


@pytest.mark.parametrize("padding, input_grad, bf16", [(p, g, b) for p in (0, 1, 2, 3) for g in (False, True)
                                                      for b in (False, True)])
def test_the_explicitly_padded_convolution_is_conv2d_in_value_gradient_and_under_vmap(padding, input_grad, bf16):
    """models.Conv2d pads a wide zero padding explicitly on a CPU where that is faster (no input gradient,
    or bf16 autocast): the outputs and every gradient are nn.Conv2d's (up to summation order), with the
    same parameters and padding attribute, and it runs in vmap (the batched evaluation)."""
    from pdd_engine.models import Conv2d
    torch.manual_seed(0)
    ours = Conv2d(1, 8, 3, padding=padding)
    theirs = torch.nn.Conv2d(1, 8, 3, padding=padding)
    theirs.load_state_dict(ours.state_dict())
    assert ours.padding == theirs.padding == (padding, padding)
    x = torch.randn(5, 1, 28, 28, requires_grad=input_grad)
    results = []
    for conv in (ours, theirs):
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = conv(x)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach().float(), conv.weight.grad.clone(), conv.bias.grad.clone()]
                       + ([x.grad.clone()] if input_grad else []))
        conv.zero_grad()
    tol = {"rtol": 2e-2, "atol": 2e-1} if bf16 else {"rtol": 1e-4, "atol": 1e-3}
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **tol)
    if not bf16:  # the outputs to float32 summation order (bit for bit with oneDNN's AVX-512 kernels; AVX2's
        # padding-1 and padding-3 kernels sum in different orders, measured up to 3.6e-7 apart)
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    params = {k: v.detach().unsqueeze(0).repeat(2, *([1] * v.dim())) for k, v in ours.named_parameters()}
    batched = torch.func.vmap(lambda p, xb: torch.func.functional_call(ours, p, (xb,)))(params, x.detach().expand(2, *x.shape))
    torch.testing.assert_close(batched[1], theirs(x.detach()).detach())


def test_parse_arch_and_resnet():
    assert parse_arch("convnet-d4-w64") == {"family": "convnet", "depth": 4, "width": 64}
    assert parse_arch("resnet")["norm"] == "batch"
    net = build_model(1, 10, 8, family="resnet", width=8, norm="batch")
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    with pytest.raises(ValueError):
        parse_arch("vit")


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale", "rotate"])
@pytest.mark.parametrize("n_syn", [1, 2, 7])
def test_dsa_siamese_call_gives_every_sample_of_any_batch_the_same_transform(op, n_syn):
    """Matching a real batch of 32 against a synthetic batch of n: one transform for all of them."""
    aug = DSA([op])
    real = torch.randn(32, 3, 16, 16)
    for seed in range(8):
        big = aug(real, seed)
        assert torch.allclose(aug(real[:n_syn], seed), big[:n_syn], atol=1e-6)
        # the same transform on every sample: applying it to copies of one image gives one image
        same = aug(real[:1].expand(n_syn + 3, -1, -1, -1).contiguous(), seed)
        assert torch.allclose(same, same[:1].expand_as(same), atol=1e-6)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "scale", "rotate"])
def test_dsa_per_sample_call_varies_within_a_batch(op):
    """Training networks (``siamese=False``) draws parameters per sample, for diversity."""
    x = torch.randn(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    out = DSA([op])(x, 3, siamese=False)
    assert not torch.allclose(out, out[:1].expand_as(out))


@pytest.mark.parametrize("size, k", [(8, 4), (16, 8), (28, 14), (32, 16), (7, 4)])
def test_cutout_square_is_round_half_the_size(size, k):
    """k x k with k = round(size / 2), as the reference; 4 x 4 on 8 x 8 (it was 5 x 5)."""
    from pdd_engine.augment import cutout
    x = torch.ones(200, 1, size, size)
    out = cutout(x, torch.rand(len(x), 2, generator=torch.Generator().manual_seed(0)))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == k * k  # an uncut square lies fully inside; others are clipped at the border
    assert (zeros > 0).all()


def test_dsa_is_siamese_differentiable_and_random():
    aug = DSA(["color", "crop", "cutout", "flip", "scale", "rotate"])
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    assert torch.equal(aug(x, 5), aug(x, 5))
    assert any(not torch.equal(aug(x, 5), aug(x, s)) for s in range(6, 10))
    aug(x, 3).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(DSA([])(x, 1), x)


def test_digits_read_from_scikit_learns_file_are_scikit_learns_digits():
    from sklearn.datasets import load_digits as sk_digits
    from pdd_engine.datasets.builtin import digits_arrays
    images, target = digits_arrays()
    want = sk_digits()
    assert np.array_equal(images, want.images) and np.array_equal(target, want.target)


def test_a_mirror_is_noted_only_where_it_changes_what_an_image_shows():
    """Digits (scikit-learn's, MNIST, SVHN) are declared as changed by a mirror, photos not; the note names the
    strategy without flip, in the UI's field and the CLI's flag, and is silent without flip or on photos."""
    from pdd_engine.augment import mirror_note
    from pdd_engine.registry import find
    assert [find(n).mirrors for n in ("digits", "mnist", "svhn")] == [False] * 3
    assert [find(n).mirrors for n in ("fashion_mnist", "cifar10", "cifar100", "folder:x")] == [True] * 4
    ops = ("color", "crop", "cutout", "flip", "scale", "rotate")
    note = mirror_note(ops, find("mnist").mirrors, "mnist")
    assert "Augmentation to color_crop_cutout_scale_rotate" in note and "--dsa-strategy color_crop_cutout_scale_rotate" in note
    assert "--dsa-strategy none" in mirror_note(("flip",), False, "digits")
    assert mirror_note(ops[:3], False, "mnist") is None and mirror_note(ops, True, "cifar10") is None
