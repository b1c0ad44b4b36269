"""Units for the Ray tests, in a module Ray's workers import as ``tests.raytasks``."""

import os
import time
from pathlib import Path


def die_once(shared: dict, item: int) -> int:
    """Kills its worker process the first time (a node or worker lost mid-task), then succeeds."""
    marker = Path(shared["dir"]) / f"died-{item}"
    if not marker.exists():
        marker.write_text("x")
        os._exit(1)
    return item * 10


def sleepy(shared: dict, item: int) -> int:
    Path(shared["dir"], f"started-{item}").write_text("x")
    time.sleep(60)
    Path(shared["dir"], f"finished-{item}").write_text("x")
    return item
