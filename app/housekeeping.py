"""The server's upkeep, so it costs little beside the engine: the disk it writes is bounded (exported
bundles and kept uploads are pruned by age and size), and the web framework's queue does not poll
faster than a visitor can notice.

Everything pruned can be made again: a bundle is re-exported from the cache by the Runs tab's
download (or a re-run, which the cache serves), an upload is uploaded again. The web framework's
own temporary copies are bounded by ``gr.Blocks(delete_cache=...)`` (see :func:`app.layout.build`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pdd_engine.service import env

# Gradio's queue looks for new events every 1 ms and for progress every 10 ms, idle or not
# (gradio/queueing.py, ``sleep_when_free``): 0.8 CPU s in every 10 s with nobody on the page, on the
# two cores a run's engine uses. 20 ms and 100 ms start a click's event well within a frame.
QUEUE_POLL_S = 0.02
PROGRESS_POLL_S = 0.1


@dataclass(frozen=True)
class Bound:
    folder: Path
    max_age_s: float
    max_bytes: int

    @classmethod
    def from_env(cls, folder: Path, name: str) -> "Bound":
        """The bound ``PDD_<NAME>_KEEP_HOURS`` and ``PDD_<NAME>_MAX_GB`` set."""
        return cls(Path(folder), env(f"PDD_{name}_KEEP_HOURS") * 3600, int(env(f"PDD_{name}_MAX_GB") * 2 ** 30))


def prune(bound: Bound, now: float | None = None, busy: frozenset[Path] = frozenset()) -> list[Path]:
    """Delete files older than the bound's age, then the oldest until the folder fits its size;
    empty sub-folders go too, never a file in ``busy`` (an upload a queued or running run will read).
    Returns what was deleted. Files vanishing meanwhile are fine."""
    now = time.time() if now is None else now
    files = []
    for p in bound.folder.rglob("*") if bound.folder.is_dir() else []:
        try:
            if p.is_file():
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        except OSError:
            continue
    files.sort()  # oldest first
    total = sum(size for _, size, _ in files)
    gone = []
    for mtime, size, p in files:
        if now - mtime <= bound.max_age_s and total <= bound.max_bytes:
            break
        if busy and p.resolve() in busy:
            continue
        try:
            p.unlink()
            gone.append(p)
            total -= size
        except OSError:
            continue
    for d in sorted((d for d in bound.folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass
    return gone


def start_janitor(bounds: list[Bound], every_s: float = 600,
                  busy: Callable[[], frozenset[Path]] = frozenset) -> threading.Thread:
    """Prune every bound now and then every ``every_s`` seconds, in a daemon thread, sparing ``busy()``."""
    def loop() -> None:
        while True:
            for b in bounds:
                try:
                    prune(b, busy=busy())
                except Exception:  # noqa: BLE001 - housekeeping must never take the server down
                    pass
            time.sleep(every_s)
    t = threading.Thread(target=loop, daemon=True, name="pdd-janitor")
    t.start()
    return t


def quiet_queue(demo) -> bool:
    """Slow the polling of ``demo``'s queue (after ``demo.queue()``) to QUEUE_POLL_S and PROGRESS_POLL_S.
    These are private attributes of Gradio's queue: if a Gradio release renames them, the server runs as
    before (returns False) and tests/test_housekeeping.py fails, so the change is noticed."""
    q = getattr(demo, "_queue", None)
    names = ("sleep_when_free", "progress_update_sleep_when_free")
    if q is None or not all(isinstance(getattr(q, n, None), (int, float)) for n in names):
        return False
    q.sleep_when_free = max(q.sleep_when_free, QUEUE_POLL_S)
    q.progress_update_sleep_when_free = max(q.progress_update_sleep_when_free, PROGRESS_POLL_S)
    return True
