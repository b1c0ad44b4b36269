"""Which torch device a run uses (CUDA when present and not refused, never required), and the
arithmetic its distillation runs in."""

from __future__ import annotations

import contextlib
from typing import Optional

from .errors import PDDError
from .lazy import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cuda`` without a GPU is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PDDError("device 'cuda' was requested but no CUDA GPU is available", "set device to cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def matching_precision(precision: str, device: torch.device):
    """The context a method's loss runs in: bf16 autocast for ``bfloat16``, else none (float32).

    Autocast's weight cache is off, so a context may span optimiser steps: with it on, a context around a
    training loop kept serving the bf16 copies of the first step's weights after SGD had changed them,
    and the evaluation networks of ``bench/speed.py --only variants`` ended at chance (17.5 % on digits)."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


def precision_note(precision: str, device: torch.device) -> Optional[str]:
    """A line for the run's log when ``bfloat16`` was asked of a processor without bf16 arithmetic,
    where it is emulated and slower than float32 (6x for a DM iteration on an AVX2 CPU); else None."""
    if precision != "bfloat16" or has_bf16(device):
        return None
    return ("precision bfloat16: this processor has no bf16 arithmetic, so the distillation runs slower than in "
            "float32; set precision to float32 for speed")


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (CPU: oneDNN's check for AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
