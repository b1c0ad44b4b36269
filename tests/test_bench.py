"""The prepared GPU check runs end to end on CPU at toy sizes, so it works when a GPU is lent."""

import os
import subprocess
import sys
from pathlib import Path

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
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "breakdown.py"), "--tiny", "--only", "dm,eval",
                          "--out", str(tmp_path / "breakdown")], capture_output=True, text=True, timeout=600)
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
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--only", "executor",
                          "--out", str(tmp_path / "speed")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    rows = json.loads((tmp_path / "speed.json").read_text())
    runs = [rows[f"executor_{name}_{workers}"] for name, workers in (("local", 1), ("ray", 1), ("ray", 2))]
    assert all("failed" not in r for r in runs), runs
    assert len({r["checksum"] for r in runs}) == 1 and len({tuple(r["eval_acc"]) for r in runs}) == 1
    assert all(len(r["eval_acc"]) == 5 and r["experts_s"] > 0 and r["eval_s"] > 0 for r in runs)
