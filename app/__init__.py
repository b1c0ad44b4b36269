"""PDD Studio's web app: a thin Gradio layer over :mod:`pdd_engine` (see app.ui and app.jobs)."""
