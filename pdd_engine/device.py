"""Which torch device a run uses (CUDA when present and not refused, never required), the arithmetic
its training runs in, and the process's memory allocator settings."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Optional

from .errors import PDDError
import torch



def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cuda`` without a GPU is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PDDError("device 'cuda' was requested but no CUDA GPU is available", "set device to cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def arithmetic(precision: str, device: torch.device):
    """The context a computation runs in for a ``precision`` setting (the matching's ``precision``, the
    evaluation's ``eval_precision``): bf16 autocast for ``bfloat16``, else none (float32).

    Autocast's weight cache is off, so a context may span optimiser steps: with it on, a context around a
    training loop kept serving the bf16 copies of the first step's weights after SGD had changed them,
    and the evaluation networks of ``bench/speed.py --only variants`` ended at chance (17.5 % on digits)."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


def precision_note(field: str, precision: str, device: torch.device, what: str) -> Optional[str]:
    """A line for the run's log when config ``field`` asks ``bfloat16`` of a processor without bf16
    arithmetic, where it is emulated and slower than float32 (6x for a DM iteration on an AVX2 CPU);
    ``what`` names the work it slows. Else None."""
    if precision != "bfloat16" or has_bf16(device):
        return None
    return (f"{field} bfloat16: this processor has no bf16 arithmetic, so {what} runs slower than in "
            f"float32; set {field} to float32 for speed")


def cpu_flags() -> set[str]:
    """The processor's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU with bf16 units, a CPU with AVX-512 BF16 or
    AMX (elsewhere oneDNN emulates bf16, several times slower than float32 on an AVX2 CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# A CPU gains from bf16 on large feature maps and not on small ones, where norms and pooling (element-wise work
# that bf16 does not speed up) outweigh the convolutions. Digits (8 px) at width 32 ran no faster in bf16 on an
# AMD EPYC with AVX-512 BF16 and slower on an Intel Xeon with AMX (the default run: bench/speed.py --only
# arithmetic); 8 px at width 128 and 28 px at width 32 gained on both (--only precision). The first block's map
# per image (width x side^2) decides, bf16 from the smallest measured gain up.
BF16_MIN_MAP = 128 * 8 * 8


def resolve_precision(value: str, device: torch.device, map_size: Optional[int] = None) -> str:
    """``auto``: bfloat16 where ``device`` has bf16 arithmetic and, on a CPU, the network's first feature map per
    image (``map_size``: width x side^2; None when not known before loading) is at least :data:`BF16_MIN_MAP`;
    float32 elsewhere. Anything else as it is."""
    if value != "auto":
        return value
    small = device.type == "cpu" and map_size is not None and map_size < BF16_MIN_MAP
    return "bfloat16" if has_bf16(device) and not small else "float32"


def first_map(cfg) -> Optional[int]:
    """width x side^2 of ``cfg``'s first block per image, where the side is known before the data is loaded."""
    return cfg.width * cfg.known_size ** 2 if cfg.known_size else None


def auto_reason(cfg, device: torch.device) -> str:
    """Why ``auto`` arithmetic resolved as it did for ``cfg`` on ``device``: a clause for the run's log."""
    if not has_bf16(device):
        return "no bf16 instructions"
    if resolve_precision("auto", device, first_map(cfg)) == "float32":
        return "this device has bf16 instructions, but a network this small runs no faster in bf16 on a CPU"
    return "this device has bf16 instructions"


def resolved(cfg):
    """``cfg`` with every ``auto`` resolved: the arithmetic for the device it runs on and the network's size, the
    augmentation for its dataset. What a run computes with, what its keys, record and manifest say (an ``auto``
    run of MNIST on a bf16 processor is the bfloat16 run; an ``auto`` augmentation on digits is the strategy
    without flip)."""
    if "auto" not in (cfg.precision, cfg.eval_precision, cfg.dsa_strategy):
        return cfg
    device, size = resolve_device(cfg.device), first_map(cfg)
    return cfg.replace(precision=resolve_precision(cfg.precision, device, size),
                       eval_precision=resolve_precision(cfg.eval_precision, device, size), dsa_strategy=cfg.augmentation)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 2 ** 31 - 1


def tune_allocator() -> bool:
    """Keep freed CPU tensors' memory in the process for the next training step (glibc only; a no-op
    returning False elsewhere). Called once by every engine entry point (a run, an executor unit).

    A training step allocates its activations afresh and frees them in the backward pass. glibc hands
    blocks over its mmap threshold straight back to the kernel, and trims the heap's free top once it
    passes the trim threshold, so the next step page-faults the same memory in again: the 1-channel
    first convolution of an MNIST ConvNet took 5 ms per 16 images instead of 0.5. With blocks up to 32 MiB
    served from the heap and no trimming, the evaluation's training ran 8-13 % faster (MNIST, width 128,
    100 images: 473-489 -> 503-546 images/s over two runs of three) with the same peak memory (1,159 vs
    1,174 MB); DM, MTT and expert iterations measured the same either way. Setting only the trim
    threshold switches glibc's adaptive mmap threshold off and halved the speed, hence both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other libcs: their allocator, their defaults
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
