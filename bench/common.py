"""What every benchmark script shares: the machine it ran on, and writing its JSON + markdown."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Platform, CPU count, torch version and GPU (None on CPU-only machines)."""
    import torch
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_report(out: str | Path, report: dict, md: str) -> None:
    """``out``.json (the numbers) and ``out``.md (the table), side by side."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2))
    Path(f"{out}.md").write_text(md)
