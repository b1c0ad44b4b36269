"""The README and docs: their generated tables are what the results data gives, and they say what a newcomer
needs (the two commands), within the README's budget."""

import json
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", report.DOCUMENTS, ids=lambda p: p.name)
def test_every_generated_table_is_what_the_data_gives(doc):
    """A figure is never typed by hand: each marked table equals a fresh render (python -m bench.report)."""
    text = doc.read_text()
    assert report.render(text) == text, f"{doc.name} is stale: run python -m bench.report"


def test_the_readme_is_short_and_names_the_two_commands_and_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "scripts/start.sh" in readme and "scripts/test.sh" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name
    assert readme.count("<!-- table:") == readme.count("<!-- end table -->") >= 2


def test_a_table_renders_rows_and_says_when_there_are_none(tmp_path, monkeypatch):
    """The render can fail: a marked table of rows that match, and one line where none do."""
    from pdd_engine.results import COLUMNS
    row = {c: "" for c in COLUMNS}
    row.update(dataset="digits", method="dm", stages="1", ipc="10", protocol="paper", width="32", iterations="200",
               eval_epochs="300", eval_models="3", precision="float32", eval_precision="float32", seeds="0 1 2",
               augmentation="color_crop_cutout_flip_scale_rotate",
               extra="{}", mean="97.00", std="0.40", random_mean="94.00", random_std="0.50", base_mean="97.00",
               base_std="0.40", base_epochs_mean="97.00", base_epochs_std="0.40", wall_s="60")
    unflipped = {**row, "augmentation": "color_crop_cutout_scale_rotate", "mean": "97.50"}  # auto's on digits
    monkeypatch.setattr(report, "quality_rows", lambda: [row, unflipped])
    monkeypatch.setitem(report.TABLES, "quality", (lambda: [row, unflipped], report.quality_table))
    text = "<!-- table: quality dataset=digits -->\nold\n<!-- end table -->\n<!-- table: quality dataset=mnist -->\n<!-- end table -->"
    out = report.render(text)
    assert "| digits | 10 | DM | 1 | both | 200 | 300 | w32 | 97.0 ± 0.4 |" in out and "old" not in out
    assert "| digits | 10 | DM | 1 | both | 200 | 300 | w32, no flip | 97.5 ± 0.4 |" in out  # its own line, named
    assert "No rows measured yet" in out.split("dataset=mnist")[1]


def test_the_stage_table_shows_each_setting_once_with_its_setup():
    """A setting measured twice is one stage table block (the newest), and rows that differ only in a knob
    say which knob: otherwise the table repeats lines no reader can tell apart."""
    from pdd_engine.results import COLUMNS
    row = {c: "" for c in COLUMNS}
    row.update(dataset="digits", method="mtt", stages="2", ipc="10", protocol="paper", width="32", iterations="200",
               eval_epochs="300", eval_models="3", precision="float32", eval_precision="float32", seeds="0 1 2",
               augmentation="color_crop_cutout_flip_scale_rotate",
               extra="{}", stage_ipc="5;10", stage_mean="93.00;94.00", stage_random="90.0;94.0", learned_lr="0.01;0.02")
    newer = {**row, "stage_mean": "93.50;95.00"}
    knob = {**row, "extra": '{"later_lr_scale": 0.3}', "stage_mean": "93.50;95.20"}
    out = report.stage_table([row, newer, knob])
    assert "| 93.0 |" not in out and out.count("| w32 | 2 | 10 | 95.0 | +1.5 |") == 1
    assert "| w32, later_lr_scale 0.3 | 2 | 10 | 95.2 | +1.7 |" in out


def test_the_showcase_preset_is_the_row_the_rule_picks():
    """docs/benchmarks.md's rule on the committed rows: of the rows that fit the showcase's time, the one
    whose smallest margin over its three comparisons is largest is the cpu-showcase preset, and that margin
    is positive. A re-measured table that picks another row fails here, so the preset and the docs' reading
    of it move together."""
    from pdd_engine.config import PRESETS, DistillConfig, preset
    from pdd_engine.results import clear_gain, read_rows, settings_of, showcase
    preset_default = lambda row: DistillConfig.make({"dataset": row["dataset"]}).augmentation  # noqa: E731

    rows = read_rows(ROOT / "bench" / "results" / "quality.csv")
    best = showcase(rows)
    assert best is not None and clear_gain(best, rows) > 0
    cfg = preset("cpu-showcase")
    ran = {k: v for k, v in settings_of(best).items() if k not in ("precision", "eval_precision")}  # auto resolves
    assert {k: getattr(cfg.replace(dsa_strategy=cfg.augmentation), k) for k in ran} == ran
    pinned = set(json.loads(best["extra"])) | ({"dsa_strategy"} if best["augmentation"] != preset_default(best) else set())
    assert set(PRESETS["cpu-showcase"]) >= pinned  # the preset pins what its row set (an augmentation other than auto's)


def test_a_gpu_row_says_so_and_is_never_the_cpu_showcase():
    """Rows from a lent GPU (bench/gpu_check.sh) share the results file: their setup names the GPU, and the
    showcase rule, which reads wall time as 2 cores' time, leaves them out whatever they gain."""
    from pdd_engine.results import COLUMNS, gain, setup, showcase
    row = {c: "" for c in COLUMNS}
    row.update(dataset="mnist", method="mtt", stages="2", ipc="10", protocol="paper", width="128", iterations="200",
               eval_epochs="300", eval_models="3", precision="bfloat16", eval_precision="bfloat16", seeds="0 1 2",
               augmentation="color_crop_cutout_scale_rotate", extra="{}", mean="97.00", std="0.10", random_mean="94.00",
               random_std="0.20", base_mean="96.00", base_std="0.10", base_epochs_mean="96.00", base_epochs_std="0.10",
               wall_s="188", machine="16 CPUs Intel(R) Xeon(R), torch 2.11.0+cu130, NVIDIA H200")
    cpu = {**row, "machine": "2 CPUs AMD EPYC (AVX-512 BF16), torch 2.14.1+cu130", "mean": "96.50"}
    assert setup(row).startswith("NVIDIA H200, w128") and setup(cpu).startswith("w128")
    assert gain(row, [row, cpu]) > gain(cpu, [row, cpu]) > 0
    assert showcase([row, cpu]) is cpu and showcase([row]) is None


def test_the_showcase_gain_is_beyond_the_seeds_spread():
    """A row ahead of a P = 1 whose seeds scatter (one unstable seed: 93.1 ± 3.2) by a wide margin within that
    spread does not beat a row ahead of all three by a smaller margin beyond it."""
    from pdd_engine.results import COLUMNS, clear_gain, gain, showcase
    row = {c: "" for c in COLUMNS}
    row.update(dataset="mnist", method="idc", stages="2", ipc="10", protocol="paper", width="32", iterations="200",
               eval_epochs="300", eval_models="3", precision="bfloat16", eval_precision="bfloat16", seeds="0 1 2",
               augmentation="color_crop_cutout_scale_rotate", extra="{}", mean="96.90", std="0.10",
               random_mean="94.10", random_std="1.00", base_mean="95.90", base_std="0.20", base_epochs_mean="95.80",
               base_epochs_std="0.30", wall_s="1500", machine="2 CPUs AMD EPYC, torch 2.14.1+cu130")
    noisy = {**row, "method": "mtt", "mean": "95.70", "std": "0.20", "base_mean": "93.10", "base_std": "3.20",
             "base_epochs_mean": "93.10", "base_epochs_std": "3.20", "random_mean": "93.50", "random_std": "0.80"}
    assert gain(noisy, [row, noisy]) > gain(row, [row, noisy])  # the plain margin would pick the noisy row
    assert clear_gain(row, [row, noisy]) == pytest.approx(0.8) and clear_gain(noisy, [row, noisy]) < 0
    assert showcase([row, noisy]) is row
