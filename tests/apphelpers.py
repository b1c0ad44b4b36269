"""Start the real app in a subprocess on a free port, for client and browser tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(tmp: Path, **env):
    port = free_port()
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_SERVER_PORT": str(port), "PDD_CACHE_DIR": str(tmp / "cache"),
                                 "PDD_EXPORT_DIR": str(tmp / "exports"), "GRADIO_ANALYTICS_ENABLED": "False",
                                 "PDD_ENGINE_THREADS": "1", **env})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((tmp / "app.log").read_text())
                time.sleep(0.25)
        else:
            raise RuntimeError("app did not start:\n" + (tmp / "app.log").read_text())
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def tampered_copy(bundle: Path, out: Path) -> Path:
    """``bundle`` with one manifest field edited to the wrong type (its checksums still match)."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b'"stages": 2', b'"stages": "two"') if name == "manifest.json" else data)
    return out
