"""What a stored record must look like to be used: the checks a read applies before trusting an entry.

The store drops (with one notice) an entry its check rejects, and the caller recomputes it; the
stage loop and the exporter read through the same checks, so a damaged entry can neither feed a run
nor end up in a bundle.
"""

from __future__ import annotations

from typing import Optional

from .config import DistillConfig
from .data import Dataset
from .evaluate import EvalProtocol


def stage_check(ds: Dataset, cfg: DistillConfig, i: int):
    """Why a stored stage record cannot be S_i of ``cfg`` on ``ds`` (None: it can)."""
    n = ds.num_classes * cfg.ipc_at(i)

    def check(t: dict, meta: dict) -> Optional[str]:
        if not {"stored", "labels", "train_x", "train_y", "real_keep"} <= set(t) or not {"lr", "losses"} <= set(meta):
            return "is not a stage record"
        if len(t["stored"]) != n or tuple(t["train_x"].shape[1:]) != (ds.channels, ds.size, ds.size):
            return f"holds images of shape {tuple(t['train_x'].shape)}, expected {n} of {(ds.channels, ds.size, ds.size)}"
        if len(t["train_x"]) != len(t["train_y"]) or len(t["real_keep"]) != len(ds.y_train):
            return "has mismatched labels or real-image mask"
        return None
    return check


def eval_check(proto: EvalProtocol):
    def check(t: dict, meta: dict) -> Optional[str]:
        acc = meta.get("acc")
        ok = isinstance(acc, list) and len(acc) == proto.models and all(0 <= a <= 1 for a in acc)
        return None if ok else "is not an evaluation of this protocol"
    return check
