"""PDD Studio web app: ``python app.py`` (settings by environment variable: docs/security.md lists them)."""

import os
from pathlib import Path

from app.housekeeping import Bound, quiet_queue, start_janitor
from pdd_engine.errors import PDDError
from pdd_engine.service import Service, env

ROOT = Path(__file__).resolve().parent


def main() -> None:
    try:  # a folder that is not writable, a setting that is not a number: one line with the fix
        cache_dir = env("PDD_CACHE_DIR")
        export_dir = env("PDD_EXPORT_DIR") or cache_dir.parent / "exports"
        upload_dir = env("PDD_UPLOAD_DIR") or cache_dir.parent / "uploads"
        env("PDD_CACHE_GB")
        bounds = [Bound.from_env(export_dir, "EXPORT"), Bound.from_env(upload_dir, "UPLOAD")]
        stagewise = env("PDD_STAGEWISE") or bool(os.environ.get("SPACES_ZERO_GPU"))
        service = Service(cache_dir, export_dir, upload_dir, data_root=os.environ.get("PDD_DATA_DIR") or None,
                          max_concurrent=env("PDD_MAX_JOBS"), threads=env("PDD_ENGINE_THREADS"), stagewise=stagewise,
                          public=env("PDD_PUBLIC_RUNS"), gpu_seconds=env("PDD_GPU_SECONDS"),
                          results=ROOT / "bench" / "results" / "quality.csv")
        concurrency, port = env("PDD_UI_CONCURRENCY"), env("GRADIO_SERVER_PORT")
    except PDDError as e:
        raise SystemExit(f"error: {e}") from None
    from app.layout import build  # after the checks: Gradio reads GRADIO_SERVER_PORT when imported
    from app.studio import Studio

    try:
        studio = Studio(service)
        start_janitor(bounds, busy=service.uploads_in_use)
        studio.prime()
        demo = build(studio)
        demo.queue(default_concurrency_limit=concurrency)
        quiet_queue(demo)
        demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port,
                    css_paths=[ROOT / "assets" / "style.css"], allowed_paths=[str(export_dir)],
                    max_file_size="500mb", show_error=True)
    finally:
        service.shutdown()


if __name__ == "__main__":
    main()
