import io
import json
import zipfile

import numpy as np
import pytest
import torch

from pdd_engine import distill
from pdd_engine.__main__ import main
from pdd_engine.errors import BundleError, PDDError
from pdd_engine.export import evaluate_bundle, export_bundle, load_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """One finished MTT run's bundle, shared by the tests that only read it."""
    from pdd_engine import DistillConfig
    from pdd_engine.cache import Store
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("bundle")
    # float32 whatever the processor (auto is bf16 where it has bf16): the tests compare against it
    cfg = DistillConfig.make({**TINY, "method": "mtt", "precision": "float32", "eval_precision": "float32"},
                             other_methods="drop")
    store = Store(tmp / "cache")
    distill(cfg, store)
    yield export_bundle(cfg, tmp / "run.zip", store), cfg
    store.close()


@pytest.mark.slow
def test_bundle_contents_and_manifest(bundle):
    path, cfg = bundle
    z = zipfile.ZipFile(path)
    m = json.loads(z.read("manifest.json"))
    assert m["format"] == "pdd-studio-bundle" and m["method"] == "mtt" and len(m["stage_entries"]) == 2
    assert m["normalisation"]["mean"] and m["model"]["depth"] == 2 and m["evaluation"]["epochs"] == cfg.eval_epochs
    assert all(e["learned_lr"] > 0 for e in m["stage_entries"])
    u2 = torch.load(io.BytesIO(z.read("union_2.pt")), weights_only=True)
    assert u2["images"].shape == (20, 1, 8, 8)  # U_2 = S_1 (10) then S_2 (10), each class-major
    assert u2["labels"].tolist() == list(range(10)) * 2
    npz = np.load(io.BytesIO(z.read("stage_1/images.npz")))
    assert npz["images"].shape == (10, 1, 8, 8)
    pngs = [n for n in z.namelist() if n.startswith("png/stage_1/")]
    assert len(pngs) == 10 and "png/stage_1/7/0.png" in pngs
    assert m["transition"]["mode"] == "chain" and all(e["base_method_accuracy"] is None for e in m["stage_entries"])


def test_manifest_carries_the_base_method_where_the_run_compared(tiny, store, tmp_path):
    cfg = tiny(compare_base="final")
    done = distill(cfg, store)
    m = load_bundle(export_bundle(cfg, tmp_path / "b.zip", store)).manifest
    first, last = m["stage_entries"]
    assert first["base_method_accuracy"] is None
    assert last["base_method_accuracy"]["mean"] == pytest.approx(done.accuracies[-1]["base_mean"])


def test_export_load_evaluate_round_trip_reproduces_manifest(bundle):
    path, _ = bundle
    m = load_bundle(path).manifest
    accs = evaluate_bundle(path)
    assert accs == [e["accuracy"]["per_model"] for e in m["stage_entries"]]


def test_cross_architecture_evaluation_runs(bundle):
    path, _ = bundle
    accs = evaluate_bundle(path, arch="convnet-w16", epochs=5, models=1)
    assert len(accs) == 2 and all(0 <= a[0] <= 1 for a in accs)


def test_a_bundle_evaluates_in_the_arithmetic_asked_for(bundle):
    """``precision`` (CLI: evaluate --precision) re-runs the protocol in bf16: other accuracies than the
    manifest's float32 ones; an unknown value is a one-line error naming the choices."""
    path, _ = bundle
    m = load_bundle(path).manifest
    assert m["evaluation"]["precision"] == "float32"
    # trained long enough that rounding shows: the bundle's own 12 epochs can leave every prediction unchanged
    assert evaluate_bundle(path, epochs=60, precision="bfloat16") != evaluate_bundle(path, epochs=60)
    with pytest.raises(PDDError, match="use auto, float32 or bfloat16"):
        evaluate_bundle(path, precision="bf16")


def test_corrupt_and_foreign_bundles_are_refused(bundle, tmp_path):
    path, _ = bundle
    raw = bytearray(path.read_bytes())
    names = zipfile.ZipFile(path).namelist()
    bad = tmp_path / "tampered.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for n in names:
            blob = src.read(n)
            dst.writestr(n, blob[:-1] + b"x" if n == "union_1.pt" else blob)
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bad)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("manifest.json", json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not a PDD Studio bundle"):
        load_bundle(foreign)
    with zipfile.ZipFile(foreign, "w") as z:  # a manifest that is not even an object
        z.writestr("manifest.json", "[]")
    with pytest.raises(BundleError, match="not a PDD Studio bundle"):
        load_bundle(foreign)
    (tmp_path / "junk.zip").write_bytes(bytes(raw[:100]))
    with pytest.raises(BundleError, match="not a zip"):
        load_bundle(tmp_path / "junk.zip")


def test_export_of_unfinished_run_is_refused(tiny, store, tmp_path):
    from pdd_engine.errors import PDDError
    with pytest.raises(PDDError, match="not finished"):
        export_bundle(tiny(), tmp_path / "x.zip", store)


def test_cli_distill_evaluate_and_errors(tmp_path, capsys):
    cache = str(tmp_path / "c")
    args = ["distill", "--stages", "2", "--ipc", "2", "--iterations", "5", "--eval-epochs", "5", "--eval-models", "1",
            "--dm-pool", "1", "--cache-dir", cache, "--quiet", "--out", str(tmp_path / "b.zip"), "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("| stage | IPC | PDD+DM acc % | DM alone (P=1) acc % | DM alone, same epochs acc % | random subset acc % |"
            in out)
    result = json.loads(out.strip().splitlines()[-1])
    first, last = result["accuracies"]
    assert result["warnings"] == []
    assert first["base_mean"] is None and first["base_std"] is None  # the base runs at the final stage by default
    assert {"mean", "std", "random_mean", "random_std", "base_mean", "base_std", "base_epochs_mean",
            "base_epochs_std"} <= set(last)
    assert 0 < last["base_mean"] <= 1 and last["base_mean"] != last["mean"]
    assert 0 < last["base_epochs_mean"] <= 1 and first["base_epochs_mean"] is None  # 2 x 5 epochs: stage 2 only
    stage2 = load_bundle(tmp_path / "b.zip").manifest["stage_entries"][1]
    assert stage2["base_method_same_epochs_accuracy"]["mean"] == last["base_epochs_mean"]
    assert stage2["base_method_same_epochs"] == 10 and stage2["matching_warning"] is None
    assert main(args[:-1] + ["--compare-base", "every"]) == 0  # stage 1's base is PDD's stage 1: served from cache
    every = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")][0]
    assert every.split("|")[3] == every.split("|")[4]
    assert main(["evaluate", str(tmp_path / "b.zip"), "--epochs", "5"]) == 0
    assert main(["distill", "--stages", "3", "--ipc", "10", "--cache-dir", cache]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.zip")]) == 2
    assert main(["runs", "--cache-dir", cache]) == 0
    assert "digits" in capsys.readouterr().out


def test_cli_progress_in_a_log_is_lines_not_carriage_returns(tmp_path, capsys):
    """With stderr a file or a pipe (a batch job's log), each bar is a line when it starts and one when its
    iterations are done, with the last loss; no carriage-return redraws. LogProgress adds a line at most
    every ``every_s`` seconds in between."""
    from pdd_engine.__main__ import LogProgress
    assert main(["distill", "--stages", "2", "--ipc", "2", "--iterations", "5", "--eval-epochs", "2", "--eval-models",
                 "1", "--dm-pool", "1", "--cache-dir", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    for stage in (1, 2):
        assert f"stage {stage}/2: 5 iterations" in lines
        assert sum(line.startswith(f"stage {stage}/2: 5/5, loss ") for line in lines) == 1
    assert lines.index("stage 1/2: 5 iterations") < next(k for k, line in enumerate(lines) if line.startswith("stage 1: acc"))
    bar = LogProgress(10, "stage 1/1", every_s=0)
    for _ in range(10):
        bar.set_postfix(loss="0.5")
        bar.update(1)
    bar.close()
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage 1/1: ") and "/10" in line]
    assert [line.split(",")[0] for line in steps] == [f"stage 1/1: {k}/10" for k in range(1, 11)]


def test_cli_refuses_an_unwritable_out_and_bad_evaluate_counts_before_any_work(tmp_path, capsys, monkeypatch):
    import pdd_engine.progressive
    monkeypatch.setattr(pdd_engine.progressive, "run", lambda *a, **k: pytest.fail("a run started"))
    missing = tmp_path / "no" / "such" / "run.zip"
    assert main(["distill", "--cache-dir", str(tmp_path / "c"), "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "does not exist" in err and "Fix:" in err and "Traceback" not in err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not __import__("os").access(locked, __import__("os").W_OK):  # root can write anywhere
        assert main(["distill", "--cache-dir", str(tmp_path / "c"), "--out", str(locked / "run.zip")]) == 2
        assert "is not writable" in capsys.readouterr().err
    for flag in ("--epochs", "--models"):
        assert main(["evaluate", str(tmp_path / "any.zip"), flag, "-1"]) == 2
        assert f"{flag} must be 1 or more" in capsys.readouterr().err


def test_idc_bundle_stores_compact_and_training_images(tiny, store, tmp_path):
    cfg = tiny(method="idc", stages=1, ipc=1, idc_factor=2)
    distill(cfg, store)
    path = export_bundle(cfg, tmp_path / "idc.zip", store)
    b = load_bundle(path)
    e = b.manifest["stage_entries"][0]
    assert e["stored_shape"] == [10, 1, 8, 8] and e["train_shape"] == [40, 1, 8, 8]
    assert "multi-formation" in b.manifest["training_form"]
    assert b.unions[0]["images"].shape[0] == 40 and evaluate_bundle(path) == [e["accuracy"]["per_model"]]


@pytest.mark.slow
def test_manifest_records_filtering_and_matching_augmentation(tiny, store, tmp_path):
    cfg = tiny(method="dc", filter_easy=True, keep_easy=0.0)
    distill(cfg, store)
    m = load_bundle(export_bundle(cfg, tmp_path / "f.zip", store)).manifest
    assert m["easy_example_filter"]["enabled"] and m["augmentation"]["matching"] == "none"
    kept = [e["real_examples_kept"] for e in m["stage_entries"]]
    assert kept[0] < m["dataset"]["train"]  # stage 1's scorers removed easy examples for stage 2


def test_runs_records_and_cli(tiny, tmp_path, capsys):
    from pdd_engine import runs
    from pdd_engine.cache import Store
    cache = str(tmp_path / "c")
    store = Store(cache)
    a, b = tiny(stages=1, ipc=1), tiny(stages=2, ipc=2, compare_base="final")
    distill(a, store)
    distill(b, store)
    recs = runs.book(store).records()
    from pdd_engine.device import resolved
    assert [r.config for r in recs] == [resolved(b).to_dict(), resolved(a).to_dict()]  # newest first, as they ran
    assert all(map(runs.current, recs))
    rb = recs[0]
    assert rb.final.stage == 2 and rb.final.base_mean is not None and rb.stages[0].base_mean is None
    assert runs.get(store, rb.id[:6]) == rb and runs.get(store, rb.key) == rb
    with pytest.raises(PDDError, match="no run matches 'zzz'.*runs list"):
        runs.get(store, "zzz")
    assert main(["runs", "show", rb.id, "--json", "--cache-dir", cache]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][1]["ipc"] == 2
    assert main(["runs", "compare", rb.id, recs[1].id, "--cache-dir", cache]) == 0
    table, differences = capsys.readouterr().out.split("\n\n")
    assert table.count(f"| {rb.id} |") == 2 and table.count(f"| {recs[1].id} |") == 1
    assert "| stages | 2 | 1 |" in differences and "| method |" not in differences  # what differs, only
    out = tmp_path / "x.zip"
    assert main(["runs", "export", rb.id, "--out", str(out), "--cache-dir", cache]) == 0
    assert load_bundle(out).manifest["config"]["stages"] == 2
    assert main(["runs", "show", "--cache-dir", cache]) == 2  # no id: one line with the fix
    assert "takes one run id" in capsys.readouterr().err
    stage_keys = set(store.keys("stage:"))
    assert main(["runs", "delete", rb.id, "--cache-dir", cache]) == 0
    assert [r.id for r in runs.book(store).records()] == [recs[1].id] and set(store.keys("stage:")) == stage_keys


# -- the manifest is untrusted: schema-checked, never a source of paths, and free of the exporter's ----
def rewrite_manifest(src, dst, change):
    """A copy of bundle ``src`` whose manifest ``change`` edits (file checksums stay valid)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for n in z.namelist():
            blob = z.read(n)
            if n == "manifest.json":
                m = json.loads(blob)
                change(m)
                blob = json.dumps(m).encode()
            out.writestr(n, blob)
    return dst


def test_a_manifest_never_makes_evaluate_read_or_create_a_path(bundle, tmp_path, monkeypatch):
    path, _ = bundle
    planted = tmp_path / "made_by_the_bundle"

    def hostile(m):
        m["config"].update(dataset="folder:/etc", data_root=str(planted), cache_dir=str(planted))
    bad = rewrite_manifest(path, tmp_path / "hostile.zip", hostile)
    import pdd_engine.datasets.userdata as U
    read = []
    monkeypatch.setattr(U, "load_user_dataset", lambda *a, **k: read.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(BundleError, match="--data PATH"):
        evaluate_bundle(bad, epochs=1)
    assert read == [] and not planted.exists()
    # a built-in dataset with a planted data_root: the manifest's folder is not used or created
    ok = rewrite_manifest(path, tmp_path / "planted_root.zip", lambda m: m["config"].update(data_root=str(planted)))
    assert len(evaluate_bundle(ok, epochs=1, models=1)) == 2 and not planted.exists()


@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("evaluation"), "evaluation is missing"),
    (lambda m: m["evaluation"].update(epochs="300"), "evaluation.epochs should be int, not str"),
    (lambda m: m.update(stage_entries={"0": 1}), "stage_entries should be list"),
    (lambda m: m["stage_entries"][0].update(union="../../etc/passwd"), "which the manifest's file list does not hold"),
    (lambda m: m["stage_entries"][1].pop("eval_lr"), "stage_entries[1].eval_lr is missing"),
    (lambda m: m.update(stage_entries=[]), "stage_entries is empty"),
    (lambda m: m.update(format_version="9"), "format_version should be int"),
    (lambda m: m["dataset"].update(fingerprint=None), "dataset.fingerprint should be str"),
])
def test_malformed_manifests_are_one_line_errors(bundle, tmp_path, change, words, capsys):
    path, _ = bundle
    bad = rewrite_manifest(path, tmp_path / "bad.zip", change)
    with pytest.raises(BundleError) as e:
        load_bundle(bad)
    assert words in str(e.value) and "malformed" in str(e.value) and "\n" not in str(e.value)
    assert main(["evaluate", str(bad), "--epochs", "1"]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_user_data_bundle_carries_no_local_path_and_evaluates_with_data(tiny, store, tmp_path, capsys):
    from tests.test_userdata import make_folder
    data = make_folder(tmp_path / "private" / "cats", n=12)
    cfg = tiny(dataset=f"folder:{data}", stages=2, ipc=2, data_root=str(tmp_path / "private" / "root"))
    distill(cfg, store)
    out = export_bundle(cfg, tmp_path / "run.zip", store)
    text = zipfile.ZipFile(out).read("manifest.json").decode()
    assert str(tmp_path) not in text and "/private/" not in text
    m = json.loads(text)
    assert m["config"]["dataset"] == "folder:cats" and m["config"]["data_root"] is None
    with pytest.raises(BundleError, match="give the same folder or .zip with --data PATH"):
        evaluate_bundle(out, epochs=1)
    assert len(evaluate_bundle(out, epochs=1, models=1, data=str(data))) == 2
    assert main(["evaluate", str(out), "--epochs", "1", "--models", "1", "--data", str(data)]) == 0
    assert "| same as exported |" in capsys.readouterr().out


def test_cli_results_lists_the_benchmark_and_prints_a_rows_command(tmp_path, capsys):
    """`pdd results` is the studio's Results tab in the CLI: each setting's newest row with its comparisons and
    setup, filtered; `--command N` prints a `distill` command whose flags give back row N's settings (the tab's
    Use these settings); a missing file or row is a one-line error naming the fix."""
    import shlex

    from pdd_engine.__main__ import build_parser, config_from_args
    from pdd_engine.results import COLUMNS, append_row
    csv_path = tmp_path / "quality.csv"
    row = {c: "" for c in COLUMNS}
    row.update(dataset="digits", method="dm", stages="1", ipc="10", protocol="paper", width="32", iterations="200",
               eval_epochs="300", eval_models="3", precision="float32", eval_precision="float32",
               augmentation="color_crop_cutout_flip_scale_rotate", seeds="0 1 2", extra="{}", mean="96.00",
               std="0.40", random_mean="94.00", random_std="0.50", base_mean="96.00", base_std="0.40")
    idc = {**row, "method": "idc", "stages": "2", "precision": "bfloat16", "augmentation": "color_crop_cutout_scale_rotate",
           "extra": '{"filter_easy": true, "lr_img": 0.5}', "mean": "97.00", "base_mean": "96.50", "base_std": "0.20",
           "base_epochs_mean": "96.80", "base_epochs_std": "0.10", "schedule": "6,4"}
    for r in (row, {**row, "mean": "96.50", "base_mean": "96.50"}, idc):  # the first is measured again: shown once, the newest
        append_row(csv_path, COLUMNS, r)
    assert main(["results", "--results", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "| 0 | digits | 10 | DM | 1 | both | w32 | 96.5 ± 0.4 |" in out and "96.0 ± 0.4" not in out
    assert "| 1 | digits | 10 | PDD+IDC | 2 | paper | w32, bf16 matching, no flip, filter_easy True, lr_img 0.5 | " \
           "97.0 ± 0.4 | 96.5 ± 0.2 | +0.5 ✓ | 96.8 ± 0.1 | +0.2 | 94.0 ± 0.5 | +3.0 ✓ |" in out
    assert main(["results", "--results", str(csv_path), "--method", "idc", "--json"]) == 0
    assert [r["row"] for r in json.loads(capsys.readouterr().out)] == [1]
    assert main(["results", "--results", str(csv_path), "--command", "1"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith("python -m pdd_engine distill ") and "--filter-easy" in command
    cfg = config_from_args(build_parser().parse_args(shlex.split(command)[3:]))
    assert (cfg.method, cfg.stages, cfg.stage_ipc, cfg.lr_img, cfg.filter_easy, cfg.dsa_strategy, cfg.precision,
            cfg.eval_precision) == ("idc", 2, (6, 4), 0.5, True, "color_crop_cutout_scale_rotate", "bfloat16", "float32")
    assert main(["results", "--results", str(csv_path), "--command", "2"]) == 2
    assert "no row 2 (rows are numbered 0 to 1)" in capsys.readouterr().err
    assert main(["results", "--results", str(tmp_path / "none.csv")]) == 2
    assert "Fix: pass --results PATH" in capsys.readouterr().err


def test_cli_repeats_a_runs_warnings_beside_its_result_and_in_its_json(tmp_path, capsys, monkeypatch):
    """An unstable MTT matching warns when its stage ends and again under the result table (with --quiet too),
    and --json lists it: a result that may be worse than it looks is not only a line scrolled past."""
    from pdd_engine.methods import mtt
    monkeypatch.setattr(mtt, "OVERSHOOTS", 1)  # this tiny run overshoots once (tests/test_progressive.py)
    args = ["distill", "--method", "mtt", "--stages", "1", "--ipc", "2", "--iterations", "30", "--lr-img", "3000",
            "--num-experts", "2", "--syn-steps", "5", "--max-start-epoch", "2", "--expert-epochs", "1",
            "--eval-epochs", "5", "--eval-models", "1", "--cache-dir", str(tmp_path / "c"), "--quiet", "--json",
            "--out", str(tmp_path / "b.zip")]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert len(result["warnings"]) == 1 and result["warnings"][0].startswith("stage 1: the trajectory matching was unstable")
    tail = captured.err.split("warning: stage 1: the trajectory matching was unstable")
    assert len(tail) == 2 and "computed stages" in tail[1]  # repeated after the table, before the time line
    entry = load_bundle(tmp_path / "b.zip").manifest["stage_entries"][0]  # and the bundle says it of its stage
    assert entry["matching_warning"].startswith("warning: the trajectory matching was unstable")
    assert main(["evaluate", str(tmp_path / "b.zip"), "--epochs", "1", "--models", "1"]) == 0  # whoever evaluates it
    assert "warning: stage 1: the trajectory matching was unstable" in capsys.readouterr().err
    assert main(["runs", "show", result["run_key"][4:12], "--cache-dir", str(tmp_path / "c")]) == 0  # its record too
    assert " stage 1: the trajectory matching was unstable" in capsys.readouterr().err


def test_cli_results_shows_a_rows_kept_seeds_one_by_one(tmp_path, capsys):
    """`pdd results --seeds N`: row N's seeds from the seeds the bench kept beside its CSV (each seed's final
    accuracy beside its comparisons, per stage, machine and time); a seed kept for another setting is not
    shown, and a row measured before seeds were kept says so."""
    from pdd_engine.results import COLUMNS, SEED_KEY, append_row, append_seed, seeds_path
    csv_path = tmp_path / "quality.csv"
    row = {c: "" for c in COLUMNS}
    row.update(dataset="digits", method="dm", stages="2", ipc="10", protocol="paper", width="32", iterations="200",
               eval_epochs="300", eval_models="3", precision="float32", eval_precision="float32",
               augmentation="color_crop_cutout_scale_rotate", seeds="0 1", extra="{}", mean="97.00", std="0.50",
               random_mean="95.00", random_std="0.10", base_mean="96.00", base_std="0.20", base_epochs_mean="96.50",
               base_epochs_std="0.10", machine="2 CPUs Xeon, torch 2.14.1")
    append_row(csv_path, COLUMNS, row)
    append_row(csv_path, COLUMNS, {**row, "ipc": "50"})  # no seed kept
    setting = {k: row[k] for k in SEED_KEY}
    stage = lambda m, **kw: {"mean": m, "random_mean": 0.95, **kw}  # noqa: E731
    for seed, last in enumerate([0.975, 0.965]):
        result = {"accuracies": [stage(0.90), stage(last, base_mean=0.96, base_epochs_mean=0.965)], "seconds": 12.0}
        append_seed(seeds_path(csv_path), setting, seed, "2 CPUs Xeon, torch 2.14.1", "abc", "now", result)
    append_seed(seeds_path(csv_path), {**setting, "width": "128"}, 1, "2 CPUs Xeon, torch 2.14.1", "abc", "now",
                {"accuracies": [stage(0.5), stage(0.5)], "seconds": 1.0})  # another setting's seed 1
    assert main(["results", "--results", str(csv_path), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 97.50 | 96.00 | 96.50 | 95.00 | 90.00 / 97.50 | 2 CPUs Xeon, torch 2.14.1 | 12 |" in out
    assert "| 1 | 96.50 | 96.00 | 96.50 | 95.00 | 90.00 / 96.50 |" in out and "50.00" not in out
    assert main(["results", "--results", str(csv_path), "--seeds", "1"]) == 0
    out, err = capsys.readouterr()
    assert "| 0 | not kept" in out and "measured before seeds were kept" in err
    assert main(["results", "--results", str(csv_path), "--seeds", "2"]) == 2
    assert "no row 2 (rows are numbered 0 to 1)" in capsys.readouterr().err
