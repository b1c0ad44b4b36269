"""User datasets: folder/zip/IDX layouts, limits, and hostile or malformed input."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from pdd_engine import events as E
from pdd_engine import run
from pdd_engine.data import load_dataset
from pdd_engine.errors import DataUnavailable
from pdd_engine.datasets.userdata import load_user_dataset
from pdd_engine.untrusted import Limits


def limits(**changes) -> Limits:
    """The environment's limits with ``changes``."""
    from dataclasses import replace
    return replace(Limits.from_env(), **changes)


def png(size=(12, 12), colour=False, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3) if colour else (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root, classes=("cat", "dog", "fox"), n=10, size=(12, 12), colour=False):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(png(size, colour, seed=hash((c, i)) % 1000))
    return root


def test_folder_dataset_with_holdout_and_grey_detection(tmp_path):
    make_folder(tmp_path / "d")
    (tmp_path / "d" / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "dog" / "broken.png").write_bytes(b"not a png")
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert ds.classes == ["cat", "dog", "fox"] and ds.channels == 1 and ds.size == 12
    assert len(ds.y_train) + len(ds.y_test) == 30 and len(ds.y_test) == 6
    assert "notes.txt: not an image file" in ds.source and "broken.png: unreadable" in ds.source


def test_zip_with_train_test_folders_and_colour_resize(tmp_path):
    z = tmp_path / "data.zip"
    with zipfile.ZipFile(z, "w") as f:
        for split, n in (("train", 6), ("test", 2)):
            for c in ("a", "b"):
                for i in range(n):
                    f.writestr(f"mydata/{split}/{c}/{i}.png", png((20, 20), colour=True, seed=i))
    ds = load_dataset(f"folder:{z}", image_size=16)
    assert ds.channels == 3 and ds.size == 16 and len(ds.y_train) == 12 and len(ds.y_test) == 4


def test_user_dataset_distils_end_to_end(tmp_path, tiny, store):
    make_folder(tmp_path / "d", n=12)
    evs = list(run(tiny(dataset=f"folder:{tmp_path / 'd'}", stages=1, ipc=1), store))
    assert isinstance(evs[-1], E.Done), evs[-1]


@pytest.mark.parametrize("setup, words", [
    (lambda p: p.mkdir(), "contains no files"),
    (lambda p: make_folder(p, classes=("only",)), "single class"),
    (lambda p: (make_folder(p, classes=("a",), size=(12, 12)), make_folder(p, classes=("b",), size=(16, 16))),
     "mixed sizes"),
    (lambda p: (p.mkdir(), (p / "x.txt").write_text("hi")), "no readable images"),
])
def test_bad_folders_get_clear_messages(tmp_path, setup, words):
    path = tmp_path / "d"
    setup(path)
    with pytest.raises(DataUnavailable) as e:
        load_dataset(f"folder:{path}")
    assert words in str(e.value) and "Fix:" in str(e.value)


def test_class_with_fewer_images_than_ipc(tmp_path, tiny, store):
    make_folder(tmp_path / "d", n=5)
    ev = list(run(tiny(dataset=f"folder:{tmp_path / 'd'}", stages=1, ipc=6), store))[-1]
    assert isinstance(ev, E.Failed) and "fewer real images" in ev.message


def test_path_traversal_zip_is_refused_and_writes_nothing(tmp_path):
    target = tmp_path / "inside"
    target.mkdir()
    z = target / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a/0.png", png())
        f.writestr("../../escaped.png", png())
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DataUnavailable, match="outside the archive"):
        load_dataset(f"folder:{z}")
    assert sorted(os.listdir(tmp_path)) == before and not (tmp_path.parent / "escaped.png").exists()


def test_limits_are_enforced(tmp_path):
    make_folder(tmp_path / "d", n=3)
    with pytest.raises(DataUnavailable, match="over the limit"):
        load_user_dataset(f"folder:{tmp_path / 'd'}", limits=limits(files=5))
    with pytest.raises(DataUnavailable, match="over the limit of 100 bytes"):
        load_user_dataset(f"folder:{tmp_path / 'd'}", limits=limits(total_bytes=100))
    big = make_folder(tmp_path / "big", classes=("a", "b"), n=2, size=(64, 64))
    with pytest.raises(DataUnavailable, match="over the 32 px limit"):
        load_user_dataset(f"folder:{big}", limits=limits(side=32))


def test_idx_folder(tmp_path):
    from tests.test_data_models_augment import write_idx
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (40, 10, 10)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(40) % 4)
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.num_classes == 4 and len(ds.y_test) == 8 and ds.size == 10


# -- hostile uploads: refused early, in bounded memory (peak resident set measured in a child) ----
PEAK = """
from pdd_engine.errors import DataUnavailable
from pdd_engine.datasets.userdata import load_user_dataset

def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) / 1024

with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current set: imports do not count
    f.write("5")
before = status("VmRSS")
try:
    out = load_user_dataset({name!r}, image_size={size!r})
    message = "loaded %d images" % len(out[1])
except DataUnavailable as e:
    message = str(e)
print(status("VmHWM") - before)
print(message)
"""


def peak_mb(name, size=None):
    """(MB the loader added to the peak resident set, its message), in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path
    code = PEAK.format(root=str(Path(__file__).resolve().parents[1]), name=name, size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    grew, message = out.stdout.strip().splitlines()[-2:]
    return float(grew), message


def blank_png(side, mode):
    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_bomb_entry_is_refused_before_it_is_inflated(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("b/0.png", png())
        with f.open("a/0.png", "w") as w:  # 256 MiB of zeros, about 250 KB compressed
            for _ in range(256):
                w.write(bytes(2 ** 20))
    assert z.stat().st_size < 2 ** 20
    grew, message = peak_mb(f"folder:{z}")
    assert "a/0.png" in message and "over the limit of 64 MiB per file" in message and "PDD_MAX_FILE_BYTES" in message
    assert grew < 64, f"{grew:.0f} MB"


def test_pixel_bomb_is_refused_from_headers_alone(tmp_path):
    z = tmp_path / "pixels.zip"
    blank = blank_png(4096, "RGB")  # 48 MiB decoded, a few KB as PNG
    with zipfile.ZipFile(z, "w") as f:
        for i in range(32):
            f.writestr(f"{'ab'[i % 2]}/{i}.png", blank)
    grew, message = peak_mb(f"folder:{z}", 32)
    assert "537 million pixels" in message and "PDD_MAX_PIXELS" in message
    assert grew < 64, f"{grew:.0f} MB"


def test_large_images_are_decoded_one_at_a_time_to_the_target_size(tmp_path):
    """Eight 4096 x 4096 colour images (48 MiB each decoded) under the pixel limit: they load, and
    the peak holds about one decoded image, not eight."""
    z = tmp_path / "big.zip"
    blank = blank_png(4096, "RGB")
    with zipfile.ZipFile(z, "w") as f:
        for i in range(8):
            f.writestr(f"{'ab'[i % 2]}/{i}.png", blank)
    grew, message = peak_mb(f"folder:{z}", 16)
    assert message == "loaded 6 images"  # 8 minus the 20 % hold-out
    assert grew < 200, f"{grew:.0f} MB"


def test_limits_come_from_the_environment_and_a_bad_value_is_named(monkeypatch, tmp_path):
    make_folder(tmp_path / "d", n=3)
    monkeypatch.setenv("PDD_MAX_FILES", "5")
    with pytest.raises(DataUnavailable, match="PDD_MAX_FILES"):
        load_user_dataset(f"folder:{tmp_path / 'd'}")
    monkeypatch.setenv("PDD_MAX_FILES", "lots")
    with pytest.raises(DataUnavailable, match="'lots' is not a whole number"):
        load_user_dataset(f"folder:{tmp_path / 'd'}")


def test_corrupt_zip_entries_are_skipped_and_named(tmp_path):
    z = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for c in ("a", "b"):
            for i in range(5):
                f.writestr(f"{c}/{i}.png", png(seed=i))
    with zipfile.ZipFile(z) as f:
        info = f.getinfo("a/3.png")
    raw = bytearray(z.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(start + 5, start + info.compress_size - 5):
        raw[k] ^= 0x5A  # scramble the deflate stream (or only its CRC check catches it)
    z.write_bytes(bytes(raw))
    ds = load_dataset(f"folder:{z}")
    assert len(ds.y_train) + len(ds.y_test) == 9 and "a/3.png: corrupt zip entry" in ds.source


def test_a_class_with_no_readable_image_is_named(tmp_path):
    make_folder(tmp_path / "d", classes=("cat", "dog"))
    (tmp_path / "d" / "emu").mkdir()
    (tmp_path / "d" / "emu" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataUnavailable, match="class 'emu' has no readable images") as e:
        load_dataset(f"folder:{tmp_path / 'd'}")
    assert "folder 'emu'" in str(e.value)


def test_skipped_files_are_named_to_the_user_when_a_run_starts(tmp_path, tiny, store):
    make_folder(tmp_path / "d", n=12)
    (tmp_path / "d" / "dog" / "broken.png").write_bytes(b"not a png")
    evs = list(run(tiny(dataset=f"folder:{tmp_path / 'd'}", stages=1, ipc=1), store))
    warned = [e.text for e in evs if isinstance(e, E.Message) and e.stage == 0 and e.text.startswith("warning")]
    assert len(warned) == 1 and warned[0].startswith("warning: 1 file(s) skipped: skipped dog/broken.png: unreadable")
    from app.render import RunView
    assert any(m.startswith("data: warning: 1 file(s) skipped") for m in RunView.of(evs).messages)
