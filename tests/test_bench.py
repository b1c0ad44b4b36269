"""The prepared GPU check runs end to end on CPU at toy sizes, so it works when a GPU is lent."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_with_tiny_sizes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "gpu_check.md").read_text()
    for step in ("tests", "speed", "quality"):
        assert f"- {step}: ok" in report, report
    assert "CPU only" in report and "| dm iteration | bf16 |" in report
    assert "| digits | 2 | PDD+MTT | 2 | paper |" in report  # the P = 2 row, beside P = 1 and its own random
    assert "skipped" in (tmp_path / "tests.log").read_text()  # no GPU here: the CUDA tests skip, they do not fail


def test_profile_script_breaks_a_dm_iteration_and_an_evaluation_epoch_down_by_operator(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.breakdown", "--tiny", "--only", "dm,eval",
                          "--out", str(tmp_path / "breakdown")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    report = json.loads((tmp_path / "breakdown.json").read_text())
    for target in ("dm", "eval"):
        shares = report[target]["groups"]
        assert abs(sum(shares.values()) - 1) < 1e-6 and "convolution" in shares
        assert report[target]["top"] and report[target]["cpu_s"] > 0
    assert "DM iteration" in (tmp_path / "breakdown.md").read_text()


def test_executor_rows_give_the_same_experts_and_accuracies_on_every_executor(tmp_path):
    """bench/speed.py --only executor at toy sizes: local and Ray (1 and 2 workers) each time one stage's
    experts and 5-network evaluation, and agree on the trajectories and the accuracies."""
    out = subprocess.run([sys.executable, "-m", "bench.speed", "--tiny", "--only", "executor",
                          "--out", str(tmp_path / "speed"), "--results", str(tmp_path / "speed.csv")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    rows = json.loads((tmp_path / "speed.json").read_text())
    runs = [rows[f"executor_{name}_{workers}"] for name, workers in (("local", 1), ("ray", 1), ("ray", 2))]
    assert all("failed" not in r for r in runs), runs
    assert len({r["checksum"] for r in runs}) == 1 and len({tuple(r["eval_acc"]) for r in runs}) == 1
    assert all(len(r["eval_acc"]) == 5 and r["experts_s"] > 0 and r["eval_s"] > 0 for r in runs)


def test_precision_rows_time_both_arithmetics_and_give_their_ratio(tmp_path):
    """bench/speed.py --only precision at toy sizes: each row times float32 and bf16 at one thread and its
    speed-up is bf16's rate over float32's (a CSV row per measurement, as every section)."""
    out = subprocess.run([sys.executable, "-m", "bench.speed", "--tiny", "--only", "precision",
                          "--out", str(tmp_path / "speed"), "--results", str(tmp_path / "speed.csv")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    rows = {k: v for k, v in json.loads((tmp_path / "speed.json").read_text()).items() if k.startswith("precision ")}
    assert set(rows) == {"precision dm iteration 8px w16", "precision evaluation training 8px w16"}
    for r in rows.values():
        assert r["float32"] > 0 and r["bf16"] > 0 and r["speedup"] == pytest.approx(r["bf16"] / r["float32"])
    assert (tmp_path / "speed.csv").read_text().count("precision") >= 2 * len(rows)


def test_quality_rows_render_beside_the_reference_codes_accuracy(tmp_path):
    """bench.report --reference: each quality row the reference code also ran gets both accuracies, their
    difference, and whether the engine is within 0.2 points of the reference or better; rows it did not run
    get none, and a reference row without its accuracies is refused with the fix."""
    import json
    from bench import report

    row = {"dataset": "digits", "ipc": "10", "method": "dm", "protocol": "paper"}
    rows = [{**row, "stages": "1", "mean": "95.2", "std": "0.16"}, {**row, "stages": "2", "mean": "94.2", "std": "0.16"}]

    def table(ref_accs: list[float]) -> str:
        path = tmp_path / "ref.json"
        path.write_text(json.dumps({"how": "the harness", "rows": [
            {"dataset": "digits", "ipc": 10, "method": "dm", "stages": 1, "accuracies": ref_accs, "label": "as is"},
            {"dataset": "digits", "ipc": 10, "method": "dm", "stages": 1, "accuracies": [0.9, 0.9, 0.9],
             "label": "other net"}]}))
        return report.reference_table(rows, report.load_reference(str(path)))

    near = table([0.953, 0.953, 0.953])  # engine 95.2 vs 95.3: 0.1 below, within the bar
    assert "Against the reference code: the harness" in near
    assert "| digits | 10 | DM | 1 | 95.2 ± 0.2 | as is | 95.3 ± 0.0 | -0.1 | yes |" in near
    assert "| digits | 10 | DM | 1 | 95.2 ± 0.2 | other net | 90.0 ± 0.0 | +5.2 ✓ | yes |" in near
    assert "| DM | 2 | 94.2" not in near  # P = 2 has no reference row
    far = table([0.960, 0.962, 0.964])  # 1.0 below, outside both stds
    assert "| 95.2 ± 0.2 | as is | 96.2 ± 0.2 | -1.0 ✓ | no |" in far
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"dataset": "digits", "ipc": 10, "method": "dm", "stages": 1}]}))
    with pytest.raises(SystemExit, match="lacks accuracies. Fix: give every row those keys"):
        report.load_reference(str(tmp_path / "bad.json"))


def test_the_arithmetic_ceiling_is_each_convolutions_flops_at_its_own_measured_rate():
    """bench/speed.py's ceiling: the floor per image is every convolution's FLOPs at the best rate measured
    for it (forward; backward for the weights only in the first layer, whose input is the images, unless
    the images' gradient is wanted too, as DM's synthetic set does)."""
    from bench.speed import m_peak
    r = m_peak({"size": 28, "depth": 2, "width": 8, "threads": 1, "batches": [2], "reps": 1})
    for prec in ("float32", "bfloat16"):
        layers, floor = r[prec]["layers"], r[prec]["floor_s_per_image"]
        assert [round(layer["mflop"], 6) for layer in layers] == [
            2 * (32 * 32 * 8) * (1 * 9) / 1e6,  # 28 px padded by 3: 32 x 32 maps, 8 filters over 1 channel
            2 * (16 * 16 * 8) * (8 * 9) / 1e6]  # pooled to 16 x 16, 8 filters over 8 channels
        at = [(layer["mflop"] / 1e3 / layer["forward"], layer["mflop"] / 1e3 / layer["backward_weights"],
               2 * layer["mflop"] / 1e3 / layer["backward"]) for layer in layers]  # seconds per image
        assert floor["forward"] == pytest.approx(sum(f for f, _, _ in at))
        assert floor["train"] == pytest.approx(at[0][0] + at[0][1] + at[1][0] + at[1][2])
        assert floor["train_input_grad"] == pytest.approx(sum(f + b for f, _, b in at))


def test_a_whole_run_row_says_how_busy_it_kept_the_cores():
    """bench.speed's whole-run rows (presets, mtt_mnist) record the run's CPU seconds beside its wall: the share
    of the cores' time it used is what says whether a faster schedule or less arithmetic is left to win."""
    from bench.speed import m_run
    from tests.conftest import TINY
    r = m_run({"cfg": dict(TINY, dataset="digits", method="dm", compare_base="final")})
    assert r["cpu_s"] > 0 and 0 < r["busy"] <= 1.0 + 1e-6 and r["seconds"] > 0


def test_children_at_once_share_the_memory_so_each_plans_its_own_unroll(monkeypatch):
    """Three seeds at once each plan against their third of the free memory (so MTT at IPC 50 picks the
    bounded unroll, the same result, instead of three full ones that do not fit together); a lone child
    and a budget the user gave in --extra are left alone; the share is not a setting of the row."""
    from types import SimpleNamespace

    import torch

    from bench import quality
    from pdd_engine import models
    from pdd_engine.methods import unroll
    free = unroll.available_memory_bytes
    monkeypatch.setattr(unroll, "available_memory_bytes",  # a machine with 19 GB free, as this one
                        lambda device, override: 19 * 2 ** 30 if override is None else free(device, override))
    args = SimpleNamespace(jobs=1, seed_jobs=3, extra={"width": 32})
    share = quality.memory_share(args)
    assert share == {"max_memory_gb": pytest.approx(19 / 3, abs=0.01)}
    net = models.build_model(1, 10, 28, 3, 32, "instance")
    plans = [unroll.plan(net, 1, 28, 500, 20, "auto", torch.device("cpu"), gb) for gb in (None, share["max_memory_gb"])]
    assert not plans[0].bounded and 3 * plans[0].need > 19 * 2 ** 30  # alone: full, and three would not fit
    assert plans[1].bounded and 3 * plans[1].need < 19 * 2 ** 30
    assert quality.memory_share(SimpleNamespace(jobs=1, seed_jobs=1, extra={})) == {}
    assert quality.memory_share(SimpleNamespace(jobs=1, seed_jobs=3, extra={"max_memory_gb": 4})) == {}
    assert "max_memory_gb" not in quality.SETTING


@pytest.mark.parametrize("method, extra", [("dm", {}), ("idc", {"idc_factor": 2})])
def test_start_images_are_what_the_stage_began_from(method, extra):
    """With a step size near zero a stage's images stay where its method initialised them, so the curriculum
    on its start images scores what the run scored, stage by stage; with a real step they differ."""
    from bench.diagnose import diagnose, table
    from pdd_engine import DistillConfig
    base = {"dataset": "digits", "method": method, "stages": 2, "ipc": 2, "iterations": 2, "eval_epochs": 20,
            "eval_models": 1, "eval_batched": False, **extra}
    rows = diagnose(DistillConfig.make({**base, "lr_img": 1e-12}), start_images=True)
    assert [r["stage"] for r in rows] == [1, 2]
    for r in rows:
        assert r["start_images_acc"] == pytest.approx(r["acc"], abs=1e-6), r
    assert "start images %" in table(rows) and "| +0.0 |" in table(rows)
    moved = diagnose(DistillConfig.make({**base, "lr_img": 10.0}), start_images=True)
    assert any(abs(r["start_images_acc"] - r["acc"]) > 1e-6 for r in moved), moved


def test_the_quality_bench_resumes_seed_by_seed_and_measures_a_damaged_row_again(tmp_path, monkeypatch, capsys):
    """A row is written when all its seeds are in, and each seed is kept as it finishes: a resumed row runs only
    the seeds not kept (so a row longer than one sitting finishes over several), a finished row is skipped, a
    damaged row line is rebuilt from its kept seeds, a damaged seed line runs that seed again (its torn end
    does not swallow the next line), and a row with fewer seeds reuses the kept ones."""
    import json

    from bench import quality
    from pdd_engine.results import COLUMNS, read_rows
    acc = {0: 0.90, 1: 0.92, 2: 0.94}
    calls, fail = [], set()

    def child(cfg, threads, cache_dir):
        calls.append(cfg["seed"])
        if cfg["seed"] in fail:
            raise RuntimeError("killed")
        a = {"ipc": 10, "mean": acc[cfg["seed"]], "random_mean": 0.8}
        return {"accuracies": [a], "lrs": [None], "warnings": [], "seconds": 1.0, "computed": [1], "peak_mb": 10.0}
    monkeypatch.setattr(quality, "child", child)
    csv, seeds = tmp_path / "quality.csv", tmp_path / "quality_seeds.jsonl"

    def bench(seeds_arg="0,1,2"):
        calls.clear()
        monkeypatch.setattr(sys, "argv", ["quality", "--datasets", "digits", "--methods", "dm", "--stages", "1",
                                          "--seeds", seeds_arg, "--results", str(csv)])
        assert quality.main() == 0
        capsys.readouterr()
        return sorted(calls), read_rows(csv, COLUMNS)

    fail.add(2)
    assert bench() == ([0, 1, 2], [])  # a seed failed: no row, but two seeds kept
    assert len(seeds.read_text().splitlines()) == 2
    fail.clear()
    ran, rows = bench()
    assert ran == [2] and [(r["mean"], r["std"], r["seeds"]) for r in rows] == [("92.00", "1.63", "0 1 2")]
    assert bench() == ([], rows)  # finished: skipped
    csv.write_text(csv.read_text()[:-20])  # a killed writer's row
    ran, again = bench()
    assert ran == [] and [r["mean"] for r in again] == ["92.00"]
    seeds.write_text(seeds.read_text()[:-30])  # a killed writer's seed (the last one kept, seed 2)
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    ran, again = bench()
    assert ran == [2] and [r["mean"] for r in again] == ["92.00"]
    assert sorted(json.loads(line)["seed"] for line in seeds.read_text().splitlines()[-1:]) == [2]
    assert len(quality.read_seeds(seeds)) == 3
    ran, rows = bench("0,1")
    assert ran == [] and rows[-1]["seeds"] == "0 1" and rows[-1]["mean"] == "91.00"
    # a sitting on another CPU finishes what this one began (the row names both); a GPU's seeds are its own
    acc.update({3: 0.96, 4: 0.98})
    here = rows[-1]["machine"]
    monkeypatch.setattr(quality, "machine_line", lambda: "2 CPUs Other, torch 2.14.1")
    ran, rows = bench("0,1,2,3")
    assert ran == [3] and rows[-1]["machine"] == f"{here} + 2 CPUs Other, torch 2.14.1" and rows[-1]["mean"] == "93.00"
    from pdd_engine.results import gpu_of
    assert gpu_of(rows[-1]) == ""
    monkeypatch.setattr(quality, "machine_line", lambda: "16 CPUs Xeon, torch 2.14.1, NVIDIA H200")
    ran, rows = bench("0,1,2,3,4")
    assert ran == [0, 1, 2, 3, 4] and gpu_of(rows[-1]) == "NVIDIA H200"
