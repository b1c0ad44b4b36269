"""What front ends show before and after a run without training: dataset previews, automatic
settings resolved, run differences, cross-architecture tables."""

import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from pdd_engine import DistillConfig
from pdd_engine.__main__ import main
from pdd_engine.errors import BundleError, PDDError
from pdd_engine.manifest import evaluation_table
from pdd_engine.preview import montage, preview_dataset
from tests.test_userdata import make_folder


def test_preview_shows_facts_and_random_real_images_of_every_class():
    from pdd_engine.data import load_raw

    p = preview_dataset("digits", per_class=4, seed=1)
    f = p.facts()
    assert (f["num_classes"], f["channels"], f["size"], f["train"], f["test"]) == (10, 1, 8, 1438, 359)
    assert f["availability"] == "offline" and sum(f["train_per_class"]) == 1438 and len(f["classes"]) == 10
    assert p.images.shape == (40, 8, 8, 1) and p.images.dtype == np.uint8
    assert list(p.labels) == [c for c in range(10) for _ in range(4)]  # class-major
    xtr, ytr = load_raw("digits", None)[:2]
    raw = (np.transpose(xtr, (0, 2, 3, 1)) * 255).round().astype(np.uint8)
    for img, c in zip(p.images, p.labels):  # each shown image is a training image of its class
        assert any(np.array_equal(img, r) for r in raw[ytr == c])
    assert not np.array_equal(preview_dataset("digits", per_class=4, seed=2).images, p.images)  # the seed draws
    assert montage(p).shape == (10 * 9 + 1, 4 * 9 + 1, 1)


def test_preview_never_downloads(tmp_path, monkeypatch):
    from pdd_engine import datasets

    spec = datasets.find("cifar10")
    monkeypatch.setitem(datasets.DATASETS, "cifar10", spec.__class__(**{**spec.__dict__, "load": None}))
    p = preview_dataset("cifar10", data_root=str(tmp_path))  # a loader call would fail: None is not callable
    assert p.availability == "needs download" and p.images is None
    assert (p.num_classes, p.channels, p.size, p.train) == (10, 3, 32, 50000)


def test_preview_of_a_users_zip_names_no_server_path_and_a_bad_zip_is_one_line(tmp_path):
    folder = make_folder(tmp_path / "private" / "pets", n=6)
    z = tmp_path / "private" / "pets.zip"
    with zipfile.ZipFile(z, "w") as f:
        for png in folder.rglob("*.png"):
            f.write(png, png.relative_to(folder.parent))
    p = preview_dataset(f"folder:{z}", per_class=3)
    assert p.classes == ("cat", "dog", "fox") and p.images.shape[0] == 9 and p.size == 12
    assert str(tmp_path) not in json.dumps(p.facts())
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(PDDError) as e:
        preview_dataset(f"folder:{bad}")
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)


def test_cli_preview_prints_facts_and_writes_the_grid(tmp_path, capsys):
    assert main(["preview", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"] == 1438
    out = tmp_path / "digits.png"
    assert main(["preview", "digits", "--per-class", "3", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 9 + 1, 10 * 9 + 1)
    assert main(["preview", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "not on this machine" in capsys.readouterr().err


def test_automatic_settings_say_what_they_become_for_the_data():
    dm = DistillConfig().automatic(8, 1438)
    assert dm["depth"] == "2 (for 8 px)" and dm["lr_img"].startswith("3 (DM") and dm["stage_ipc"].startswith("5,5")
    assert "depth" not in DistillConfig(depth=3).automatic(8, 1438)  # set by the user: nothing automatic
    assert DistillConfig().automatic(32, 50000)["depth"] == "3 (for 32 px)"
    mtt = DistillConfig.make(dict(method="mtt")).automatic(8, 1438)
    assert mtt["syn_steps"].startswith("12 ") and mtt["lr_img"].startswith("100 ")  # 2 epochs x 6 batches of 256
    assert DistillConfig.make(dict(method="mtt")).automatic(28, 60000)["syn_steps"].startswith("20 ")  # capped
    assert DistillConfig.make(dict(method="idc")).automatic(8, 1438)["idc_factor"].startswith("1 ")
    assert DistillConfig.make(dict(method="idc")).automatic(28, 1438)["idc_factor"].startswith("2 ")


def test_config_differences_list_only_what_differs(tmp_path):
    from pdd_engine.book import RunRecord, config_differences

    def record(key, **kw):
        return RunRecord(key, DistillConfig.make(kw).to_dict(), {}, (), 0.0, "0.1.0", "keys")

    a, b, c = record("run:a", method="dm", ipc=10), record("run:b", method="mtt", ipc=10), record("run:c", method="dm")
    table = config_differences([a, b])
    assert "| method | dm | mtt |" in table and "| syn_steps | – | – |" not in table
    assert "| expert_epochs | – | 2 |" in table and "| ipc |" not in table
    assert config_differences([a, c]) == "The selected runs have the same settings."


def test_evaluation_table_puts_the_bundles_own_row_first():
    m = {"evaluation": {"family": "convnet", "depth": 2, "width": 32},
         "stage_entries": [{"stage": s, "cumulative_images_per_class": 5 * s, "accuracy": {"mean": 0.5, "std": 0.01}}
                           for s in (1, 2)]}
    headers, rows = evaluation_table(m, [(None, [[0.6, 0.7], [0.8, 0.8]]), ("resnet", [[0.1], [0.2]])])
    assert headers == ["architecture", "stage 1 (IPC 5)", "stage 2 (IPC 10)"]
    assert rows[0] == ["recorded in the bundle (convnet-d2-w32)", "50.0 ± 1.0", "50.0 ± 1.0"]
    assert rows[1] == ["same as exported", "65.0 ± 5.0", "80.0 ± 0.0"] and rows[2][0] == "resnet"


def test_user_errors_cross_process_boundaries_as_themselves():
    e = pickle.loads(pickle.dumps(BundleError("x is not a bundle", "upload a bundle")))
    assert type(e) is BundleError and str(e) == "x is not a bundle. Fix: upload a bundle."
