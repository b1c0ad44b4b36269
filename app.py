"""PDD Studio web app: ``python app.py`` (settings by environment variable, see README)."""

import os
from pathlib import Path

from app.housekeeping import Bound, start_janitor
from app.jobs import JobManager, zerogpu_stage_fn
from app.settings import env_number
from pdd_engine.cache import Store, default_cache_dir
from pdd_engine.errors import PDDError

ROOT = Path(__file__).resolve().parent


def main() -> None:
    cache_dir = os.environ.get("PDD_CACHE_DIR") or str(default_cache_dir())
    export_dir = Path(os.environ.get("PDD_EXPORT_DIR") or Path(cache_dir).parent / "exports")
    upload_dir = Path(os.environ.get("PDD_UPLOAD_DIR") or Path(cache_dir).parent / "uploads")
    try:  # a cache folder that is not writable, a setting that is not a number: one line with the fix
        store = Store(cache_dir)
        bounds = [Bound.from_env(export_dir, "EXPORT", hours=24, gib=2),
                  Bound.from_env(upload_dir, "UPLOAD", hours=24 * 7, gib=5)]
        jobs, threads = env_number("PDD_MAX_JOBS", 1), env_number("PDD_ENGINE_THREADS", 0)
        concurrency, port = env_number("PDD_UI_CONCURRENCY", 8), env_number("GRADIO_SERVER_PORT", 7860)
        stage_fn = zerogpu_stage_fn()
    except PDDError as e:
        raise SystemExit(f"error: {e}") from None
    from app.ui import Studio, build  # after the checks: Gradio reads GRADIO_SERVER_PORT when imported
    manager = JobManager(cache_dir, max_concurrent=jobs, threads=threads, stage_fn=stage_fn,
                         export_dir=str(export_dir))
    public = os.environ.get("PDD_PUBLIC_RUNS", "").lower() in ("1", "true", "yes")
    studio = Studio(manager, store, export_dir, os.environ.get("PDD_DATA_DIR"), upload_dir, public)
    start_janitor(bounds)
    studio.prime()
    demo = build(studio)
    demo.queue(default_concurrency_limit=concurrency)
    try:
        demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port,
                    css_paths=[ROOT / "assets" / "style.css"], allowed_paths=[str(export_dir)],
                    max_file_size="500mb", show_error=True)
    finally:
        manager.shutdown()


if __name__ == "__main__":
    main()
