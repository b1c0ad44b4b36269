"""The field's ConvNet family (and a small ResNet for cross-architecture checks).

ConvNet-D: D x [conv3x3(width) -> norm -> ReLU -> avgpool2] -> linear. Instance norm is GroupNorm
with one group per channel, as in the reference code. On one-channel 28 px inputs (MNIST, FashionMNIST)
the first convolution pads by 3, not 1, so the maps are 32 -> 16 -> 8 -> 4 as on CIFAR: the reference
code's network, the one the field's MNIST numbers were measured with. Pooling stops once the map is
1x1, so any depth fits any input size (8x8 digits included).
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.Identity()


# On a CPU a ConvNet runs its batch in chunks whose first-block activation is at most this many bytes,
# so conv -> norm -> ReLU -> pool of a chunk stay in cache instead of streaming a 1 GB activation
# through memory four times. Measured on the 2-core CI machine (32 MiB L3), MNIST, width 128
# (bench/speed.py --only reference, its "unchunked" rows are the same code with this set to None): a DM
# iteration 4.89 -> 3.41 s, an MTT iteration (10 steps) 16.1 -> 11.0 s, an expert epoch 275 -> 229 s;
# chunks of 4 to 32 MiB measured alike. On the AVX-512 machine (same L3 size), with the engine's allocator
# settings, a float32 DM iteration measured alike at 8 and 16 MiB and slower at 32; the bytes are counted in
# the arithmetic the convolutions run in (activation_bytes), since bf16 training ran faster at 32-64 images
# per chunk than at 16 (bench/speed.py --only chunks; README, *Chunks in bf16*).
# Per-sample norms only (instance, none): batch norm's statistics would change. None: never chunk.
CHUNK_BYTES: int | None = 8 * 2 ** 20


def cpu_bf16_autocast() -> bool:
    """Whether CPU work runs under bf16 autocast (``precision`` / ``eval_precision`` bfloat16)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def activation_bytes(x: torch.Tensor) -> int:
    """Bytes per element of the activations ``x`` makes on the CPU: bf16's 2 under CPU bf16 autocast
    (the convolutions' outputs), else ``x``'s own."""
    return 2 if x.is_floating_point() and cpu_bf16_autocast() else x.element_size()


def standard_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides, without a copy where it already is contiguous.

    A one-channel image batch is contiguous in both layouts, so its strides may say channels-last (the
    digits' come out of numpy as (64, 1, 8, 1)); the convolution then answers in channels-last, and every
    layer after it runs that layout's kernels: instance norm's took 3-12 ms where the row-major one took
    0.3-0.4 ms on (200, 32, 8, 8), and an evaluation network on digits trained 1.6x slower in bf16
    (scratch timings, torch 2.14 on the AVX-512 machine). A flat view and back gives row-major strides."""
    return x.reshape(len(x), -1).view(x.shape) if x.numel() else x


class Pool2(nn.Module):
    """2x2 average pooling, stride 2 (odd sizes drop the last row/column, as ``nn.AvgPool2d(2)``).

    On a CPU it is two strided additions and a scale: PyTorch's ``avg_pool2d`` kernel for NCHW tensors
    took 4.3 ms on a (16, 128, 32, 32) chunk against 0.5 ms this way, which made a no-grad forward of
    256 MNIST images through ConvNet-3 width 128 (DM's real batch) 0.53-0.66 s instead of 0.31-0.40 s
    and a training step on 100 images 3-19 % slower (scratch timing, three runs, 2 threads). The result
    equals ``avg_pool2d`` up to float rounding. GPUs keep the single ``avg_pool2d`` kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.avg_pool2d(x, 2)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        if (h, w) != x.shape[-2:]:  # only where a side is odd: a slice of the whole costs its backward a copy
            x = x[..., :h, :w]
        rows = x[..., 0::2] + x[..., 1::2]
        return (rows[..., 0::2, :] + rows[..., 1::2, :]).mul_(0.25)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same ``padding``, same results) that on a CPU may run a zero padding
    wider than 1 as an explicit pad of the input, then a padding-1 convolution. oneDNN's kernels for
    MNIST's first convolution (one channel, padding 3) trained the weights 1.5-2.7x slower than the same
    convolution on the input padded 28 -> 32 px beforehand (float32, 16-32 images: 2.9 -> 1.9 and
    7.7 -> 4.3 ms for forward and backward; bf16 2.2-2.6x), but in float32 the input's gradient
    (DM's and MTT's synthetic images) came slower that way (16 images: 3.1 -> 5.3 ms), so it is used
    where the input needs no gradient or under bf16 autocast (5.8 -> 4.2 ms); scratch timings, issue
    10's closing note. The outputs equal nn.Conv2d's to the last bit in float32 (the same products over
    the same zeros); the gradients up to summation order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if (x.device.type != "cpu" or self.padding_mode != "zeros" or isinstance(p, str) or p[0] != p[1]
                or p[0] < 2 or (x.requires_grad and not cpu_bf16_autocast())):
            return super().forward(x)
        return F.conv2d(F.pad(x, (p[0] - 1,) * 4), self.weight, self.bias, self.stride, 1, self.dilation, self.groups)


def first_padding(channels: int, size: int) -> int:
    """The first convolution's padding: 3 for one-channel 28 px inputs (28 -> 32 px), as the reference
    ConvNet; else 1. The reference pads every one-channel input by 3 but only ever ran 28 px; on 8 px digits
    the same padding (8 -> 12 px) made the default run 1.9x slower (70 -> 133 s) for no gain at its depth 2
    (PDD 96.9, DM alone 97.0, random 95.3 % against 97.0 / 97.1 / 94.7 in the digits table)."""
    return 3 if channels == 1 and size == 28 else 1


class ConvNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, size: int, depth: int = 3, width: int = 32,
                 norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = []
        pad = first_padding(channels, size)
        c, s = channels, size + 2 * pad - 2  # s: the map after the first convolution
        self.first_bytes = width * s * s
        for _ in range(depth):
            layers += [Conv2d(c, width, 3, padding=pad), norm_layer(norm, width), nn.ReLU(inplace=True)]
            pad = 1
            if s >= 2:
                layers.append(Pool2())
                s //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.embed_dim = width * s * s
        self.batch_norm = norm == "batch"
        self.chunk_bytes = CHUNK_BYTES
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = standard_strides(x)
        n = self.chunk_size(x)
        if n >= len(x):
            return self.features(x).flatten(1)
        return torch.cat([self.features(part).flatten(1) for part in x.split(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per pass: all of them on a GPU or under batch norm, else as many as keep the first block's
        activation within ``chunk_bytes`` (see CHUNK_BYTES), sized in the arithmetic the convolutions run
        in: bf16 under CPU autocast (``precision`` / ``eval_precision`` bfloat16), so twice the images of
        float32. Results equal the unchunked ones up to float summation order, since every other layer is
        per-sample."""
        if self.chunk_bytes is None or x.device.type != "cpu" or self.batch_norm:
            return len(x)
        return max(1, self.chunk_bytes // (self.first_bytes * activation_bytes(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm_layer(norm, cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A ResNet-10-style net (4 stages of one basic block), width-scalable, for cross-arch evaluation."""

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 32, norm: str = "instance"):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), norm_layer(norm, width), nn.ReLU(inplace=True))
        blocks, cin, s = [], width, size
        for i, w in enumerate(widths):
            stride = 2 if i > 0 and s >= 4 else 1  # stop at 2x2: norms of a 1x1 map erase the signal
            s = (s + 1) // 2 if stride == 2 else s
            blocks.append(BasicBlock(cin, w, stride, norm))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.embed_dim = cin
        self.classifier = nn.Linear(cin, num_classes)

    def embed(self, x):
        return self.blocks(self.stem(standard_strides(x))).mean(dim=(2, 3))

    def forward(self, x):
        return self.classifier(self.embed(x))


# torch's layers draw their initial weights from the process-wide generator: seeding it and building a network
# must not interleave with another thread doing the same (a run's side lane, progressive.SideLane)
_SEEDED_BUILD = threading.Lock()


def build_model(channels: int, num_classes: int, size: int, depth: int = 3, width: int = 32,
                norm: str = "instance", family: str = "convnet", seed: Optional[int] = None) -> nn.Module:
    """A network of ``family``; with ``seed``, initialised as after ``torch.manual_seed(seed)``, from any thread."""
    if seed is not None:
        with _SEEDED_BUILD:
            torch.manual_seed(seed)
            return build_model(channels, num_classes, size, depth, width, norm, family)
    if family == "resnet":
        return ResNet(channels, num_classes, size, width, norm)
    return ConvNet(channels, num_classes, size, depth, width, norm)
