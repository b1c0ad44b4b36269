"""Which torch device a run uses: CUDA when present and not refused, never required."""

from __future__ import annotations

from .errors import PDDError
from .lazy import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cuda`` without a GPU is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PDDError("device 'cuda' was requested but no CUDA GPU is available", "set device to cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")
