"""Untrusted files, fuzzed (hypothesis) and one regression test per hostile case the issue lists.

Every generated bundle or upload zip ends in a loaded, valid object or a one-line PDDError: never another
exception. ``python -m bench.robustness`` runs the same properties with many more examples (the ``slow``
profile) and records how each class of case ended and the worst peak memory.
"""

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pdd_engine.datasets.userdata import load_user_dataset
from pdd_engine.errors import BundleError, DataUnavailable, PDDError
from pdd_engine.export import load_bundle
from pdd_engine.preview import preview_dataset
from pdd_engine.untrusted import Limits

OUTCOMES: Counter = Counter()  # (property, how it ended): what bench.robustness reports
SMALL = replace(Limits.from_env(), files=60, total_bytes=4 * 2 ** 20, entry_bytes=2 ** 20, manifest_bytes=64 * 2 ** 10,
                decoded_bytes=16 * 2 ** 20, pixels=2 ** 22, bundle_stages=8)


def one_line(e: Exception) -> bool:
    return isinstance(e, PDDError) and "\n" not in str(e) and "Fix:" in str(e) and "Traceback" not in str(e)


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    if os.environ.get("PDD_FUZZ_STATS"):
        Path(os.environ["PDD_FUZZ_STATS"]).write_text(json.dumps({f"{k[0]}: {k[1]}": v for k, v in OUTCOMES.items()}))


# -- bundles ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real bundle's manifest and files (a tiny two-stage DM run on digits)."""
    from pdd_engine import DistillConfig, distill
    from pdd_engine.cache import Store
    from pdd_engine.export import export_bundle
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("good")
    cfg, store = DistillConfig.make(TINY, other_methods="drop"), Store(tmp / "cache")
    distill(cfg, store)
    path = export_bundle(cfg, tmp / "good.zip", store)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return json.loads(files.pop("manifest.json")), files


def json_values():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=6)


def paths_of(value, prefix=()):
    """Every (key path) in a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from paths_of(v, prefix + (i,))


def tensors():
    dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])
    shapes = st.lists(st.integers(0, 9), min_size=0, max_size=5)
    fills = st.sampled_from(["normal", "nan", "inf", "big", "negative"])

    @st.composite
    def tensor(draw):
        shape, dtype, fill = draw(shapes), draw(dtypes), draw(fills)
        t = torch.randn(shape) * (1e30 if fill == "big" else 1) if dtype.is_floating_point else torch.randint(-3, 12, shape)
        if fill == "nan" and t.numel() and dtype.is_floating_point:
            t.view(-1)[0] = math.nan
        if fill == "inf" and t.numel() and dtype.is_floating_point:
            t.view(-1)[-1] = math.inf
        return t.to(dtype)
    return tensor()


@st.composite
def bundle_mutation(draw, manifest, files):
    """A mutated copy of a good bundle: (manifest, files, write-checksums?, duplicate or oversized entries)."""
    m, f = json.loads(json.dumps(manifest)), dict(files)
    kind = draw(st.sampled_from(["manifest_value", "manifest_drop", "tensor", "payload", "extra", "missing",
                                 "duplicate", "oversized", "names", "stages"]))
    if kind in ("manifest_value", "manifest_drop"):
        path = draw(st.sampled_from([p for p in paths_of(m) if p]))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if kind == "manifest_drop" and isinstance(parent, dict):
            parent.pop(path[-1])
        else:
            parent[path[-1]] = draw(json_values())
    elif kind == "tensor":  # a stage file's images or labels replaced
        name = draw(st.sampled_from(sorted(n for n in f if n.endswith(".pt"))))
        d = torch.load(io.BytesIO(f[name]), weights_only=True)
        d[draw(st.sampled_from(["images", "labels", "lr"]))] = draw(tensors())
        if draw(st.booleans()):
            d.pop(draw(st.sampled_from(["images", "labels"])))
        buf = io.BytesIO()
        torch.save(d, buf)
        f[name] = buf.getvalue()
    elif kind == "payload":  # not a tensor dict at all
        name = draw(st.sampled_from(sorted(n for n in f if n.endswith(".pt"))))
        buf = io.BytesIO()
        torch.save(draw(st.one_of(tensors(), st.lists(st.integers(), max_size=3), st.text(max_size=5))), buf)
        f[name] = draw(st.sampled_from([buf.getvalue(), b"", b"\x00" * 100, b"PK\x03\x04 not a pt"]))
    elif kind == "extra":
        f[draw(st.sampled_from(["notes.txt", "stage_1/extra.pt", "../escape.pt", "/abs.pt"]))] = b"x"
    elif kind == "missing":
        f.pop(draw(st.sampled_from(sorted(f))))
    elif kind == "names":  # Windows separators, dot segments
        name = draw(st.sampled_from(sorted(f)))
        f[draw(st.sampled_from([name.replace("/", "\\"), "./" + name, name + "/"]))] = f.pop(name)
    elif kind == "stages":  # many stage entries
        m["stage_entries"] = m["stage_entries"] * draw(st.integers(2, 20))
    checksums = draw(st.booleans()) or kind in ("tensor", "payload", "stages")
    if checksums:
        m["files"] = {n: __import__("hashlib").sha256(b).hexdigest() for n, b in f.items() if n in m.get("files", f)}
    return kind, m, f, kind == "duplicate", kind == "oversized"


def write_zip(path, manifest, files, duplicate=False, oversized=False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, allow_nan=True))
        for n, b in files.items():
            z.writestr(n, b)
        if duplicate:
            z.writestr(next(iter(files)), b"second")
        if oversized:  # 8 MiB of zeros: a few KB compressed, over the 1 MiB per-file limit
            z.writestr("stage_1/big.pt", bytes(8 * 2 ** 20))
    return path


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_generated_bundles_load_valid_or_fail_in_one_line(good, tmp_path_factory):
    manifest, files = good
    tmp = tmp_path_factory.mktemp("fuzz")

    @given(bundle_mutation(manifest, files))
    def check(case):
        kind, m, f, duplicate, oversized = case
        path = write_zip(tmp / "b.zip", m, f, duplicate, oversized)
        try:
            b = load_bundle(path, SMALL)
        except PDDError as e:
            assert one_line(e) and isinstance(e, BundleError), repr(e)
            OUTCOMES[("bundle " + kind, "refused in one line")] += 1
            return
        d = b.manifest["dataset"]
        for t in b.unions + b.stages:  # what the evaluation relies on
            x, y = t["images"], t["labels"]
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (d["channels"], d["size"], d["size"])
            assert bool(torch.isfinite(x).all()) and y.dtype == torch.int64 and len(y) == len(x)
            assert 0 <= int(y.min()) and int(y.max()) < len(d["classes"])
        OUTCOMES[("bundle " + kind, "loaded, valid")] += 1
    check()


# -- upload zips -------------------------------------------------------------------------------------
def image_bytes(side, mode, fmt):
    arr = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def upload_zip(draw):
    """Entries: (name, bytes) with class folders, odd names and odd contents."""
    classes = draw(st.lists(st.sampled_from(["cat", "dog", "fox", "a b", "ünï"]), min_size=1, max_size=3, unique=True)
                   | st.just(["cat", "dog"]))
    entries = []
    for c in classes:
        for i in range(draw(st.sampled_from([3, 4, 5, 2, 0, 1]))):
            side = draw(st.sampled_from([8] * 6 + [4, 12, 33, 1, 3]))
            mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16"]))
            fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP"]))
            content = draw(st.sampled_from(["image"] * 6 + ["garbage", "empty"]))
            try:
                blob = image_bytes(side, mode, fmt) if content == "image" else (b"\x89PNG junk" if content == "garbage" else b"")
            except OSError:  # a mode the format cannot hold
                blob = image_bytes(side, "RGB", "PNG")
            prefix = draw(st.sampled_from([""] * 8 + ["wrap/", "train/", "__MACOSX/", "./"]))
            sep = draw(st.sampled_from(["/"] * 6 + ["\\"]))
            entries.append((f"{prefix}{c}{sep}{i}.{fmt.lower()}", blob))
    entries += draw(st.just([]) | st.lists(st.tuples(st.sampled_from(["../evil.png", "/etc/x.png", "notes.txt", ".hidden/0.png",
                                                        "loose.png", "cat/../../x.png", "C:\\\\x.png"]),
                                       st.just(b"x")), max_size=1))
    return entries, draw(st.sampled_from([None, 4, 8, 16])), draw(st.booleans())


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_generated_uploads_load_valid_or_fail_in_one_line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uploads")

    @given(upload_zip())
    def check(case):
        entries, size, duplicate = case
        z = tmp / "u.zip"
        with zipfile.ZipFile(z, "w") as f:
            for name, blob in entries:
                f.writestr(name, blob)
            if duplicate and entries:
                f.writestr(entries[0][0], entries[0][1])
        try:
            x, y, xt, yt, classes, source = load_user_dataset(f"folder:{z}", image_size=size, limits=SMALL)
        except PDDError as e:
            assert one_line(e) and isinstance(e, DataUnavailable), repr(e)
            assert str(tmp) not in str(e)  # named by file name, never a path on the machine
            OUTCOMES[("upload", "refused in one line")] += 1
            return
        for a, b in ((x, y), (xt, yt)):
            assert a.dtype == np.float32 and a.ndim == 4 and a.shape[-1] == a.shape[-2] >= 4 and len(a) == len(b)
            assert np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1
            assert b.dtype == np.int64 and (len(b) == 0 or (b.min() >= 0 and b.max() < len(classes)))
        assert len(y) >= len(classes) and str(tmp) not in source
        OUTCOMES[("upload", "loaded, valid")] += 1
    check()


# -- each hostile case of the issue, one test each ----------------------------------------------------------
def good_bundle(good, tmp_path, change=lambda m, f: None, name="b.zip"):
    m, f = json.loads(json.dumps(good[0])), dict(good[1])
    change(m, f)
    m["files"] = {n: __import__("hashlib").sha256(b).hexdigest() for n, b in f.items()}
    return write_zip(tmp_path / name, m, f)


def peak(code: str) -> tuple[float, str]:
    """(MB a child process added to its peak resident set running ``code``, the last line it printed)."""
    script = f"""
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) / 1024
from pdd_engine.errors import PDDError
from pdd_engine.export import load_bundle
from pdd_engine.preview import preview_dataset
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
try:
    {code}
    message = "ok"
except PDDError as e:
    message = str(e)
print(status("VmHWM") - before)
print(message)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    grew, message = out.stdout.strip().splitlines()[-2:]
    return float(grew), message


@pytest.mark.slow
def test_a_manifest_that_inflates_to_a_gibibyte_is_refused_unread(good, tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("manifest.json", "w") as w:  # 1 GiB of spaces, about 1 MB compressed
            for _ in range(1024):
                w.write(b" " * 2 ** 20)
    assert path.stat().st_size < 2 * 2 ** 20
    grew, message = peak(f"load_bundle({str(path)!r})")
    assert "over the limit of 64 MiB per file (PDD_MAX_FILE_BYTES)" in message or "PDD_MAX_MANIFEST_BYTES" in message
    assert grew < 64, f"{grew:.0f} MB"


@pytest.mark.slow
def test_a_large_listed_entry_is_refused_before_it_is_read(good, tmp_path):
    path = good_bundle(good, tmp_path, lambda m, f: f.update({"png/big.png": bytes(200 * 2 ** 20)}))
    grew, message = peak(f"load_bundle({str(path)!r})")
    assert "'png/big.png' in b.zip is 200 MiB uncompressed, over the limit of 64 MiB per file" in message, message
    assert grew < 64, f"{grew:.0f} MB"


@pytest.mark.slow
def test_decoded_size_is_bounded_before_decoding(tmp_path):
    """3,000 PNGs of 4 x 4 px (a few hundred KB zipped) at image size 128: 196 MB decoded is over a 100 MB
    limit and refused from the headers, and a preview decodes only the images it shows."""
    z = tmp_path / "tiny.zip"
    blob = image_bytes(4, "L", "PNG")
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for i in range(3000):
            f.writestr(f"{'abc'[i % 3]}/{i}.png", blob)
    os.environ["PDD_MAX_DECODED_BYTES"] = str(100 * 2 ** 20)
    try:
        grew, message = peak(f"load_user_dataset = __import__('pdd_engine.datasets.userdata', fromlist=['x'])"
                             f".load_user_dataset; load_user_dataset('folder:{z}', image_size=128)")
    finally:
        del os.environ["PDD_MAX_DECODED_BYTES"]
    assert "3,000 images at 128x128 px take 188 MiB decoded, over the limit of 100 MiB (PDD_MAX_DECODED_BYTES)" in message
    assert grew < 100, f"{grew:.0f} MB"
    grew, message = peak(f"preview_dataset('folder:{z}', image_size=128)")
    assert message == "ok" and grew < 100, (grew, message)


def test_a_class_whose_pixels_fail_is_named_and_an_encrypted_entry_is_skipped(tmp_path):
    """A file can pass its header and fail its pixels: a class that empties when decoded is named (it once
    reached the run as "fewer real images than stage 1 adds"); an encrypted entry is one skipped file, not
    zipfile's RuntimeError out of the preview, the check and the run."""
    good = image_bytes(8, "L", "PNG")
    cut = good[:len(good) // 2]  # the header reads, the pixels do not
    z = tmp_path / "cut.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i in range(12):
            f.writestr(f"a/{i}.png", good)
            f.writestr(f"b/{i}.png", cut)
    with pytest.raises(DataUnavailable, match=r"class 'b' has no readable images \(skipped b/.*truncated"):
        load_user_dataset(f"folder:{z}")
    small = tmp_path / "cut_small.zip"  # a class the preview reads in full: it says so before any run
    with zipfile.ZipFile(small, "w") as f:
        for i in range(3):
            f.writestr(f"a/{i}.png", good)
            f.writestr(f"b/{i}.png", cut)
    with pytest.raises(DataUnavailable, match="class 'b' has no readable images"):
        preview_dataset(f"folder:{small}")
    def two_classes(z):
        with zipfile.ZipFile(z, "w") as f:
            for c in "ab":
                for i in range(3):
                    f.writestr(f"{c}/{i}.png", good)
        return z
    enc = two_classes(tmp_path / "enc.zip")
    raw = bytearray(enc.read_bytes())
    raw[6] |= 1  # the first entry's "encrypted" flag, in its local header and its central directory entry
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    enc.write_bytes(bytes(raw))
    x, y, xt, yt, classes, source = load_user_dataset(f"folder:{enc}")
    assert classes == ["a", "b"] and len(x) + len(xt) == 5 and "skipped a/0.png: encrypted zip entry" in source
    from pdd_engine.untrusted import SafeZip
    with pytest.raises(BundleError, match="'a/0.png' in enc.zip is encrypted. Fix: re-create the zip without a password"):
        SafeZip(enc, Limits.from_env(), BundleError, "fix").read("a/0.png")  # a bundle's reader: one line too
    damaged = tmp_path / "encrypted"  # a damaged entry under a folder named so is damaged, not "encrypted"
    damaged.mkdir()
    crc = two_classes(damaged / "crc.zip")
    raw = bytearray(crc.read_bytes())
    raw[raw.find(b"PK\x01\x02") + 16] ^= 0xFF  # the first entry's CRC, in the central directory
    crc.write_bytes(bytes(raw))
    source = load_user_dataset(f"folder:{crc}")[5]
    assert "skipped a/0.png" in source and "encrypted" not in source.replace(str(damaged), "")


def test_reading_an_uploads_headers_inflates_only_the_headers(tmp_path, monkeypatch):
    """A preview or a check reads every header: images padded to megabytes (a few KB zipped) were inflated
    whole on each read, 2 GB per read of a 2 MB upload, at every Image size a visitor sent."""
    from pdd_engine.datasets.userdata import HEADER_BYTES, scan_folder
    padded = image_bytes(8, "L", "PNG") + bytes(2 * 2 ** 20)
    z = tmp_path / "padded.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for i in range(8):
            f.writestr(f"{'ab'[i % 2]}/{i}.png", padded)
    inflated, real_read = [0], zipfile.ZipExtFile.read

    def counted(self, n=-1):
        out = real_read(self, n)
        inflated[0] += len(out)
        return out
    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    scan = scan_folder(z, None, Limits.from_env(error=DataUnavailable))
    assert len(scan.splits["train"]) == 8 and inflated[0] <= 8 * HEADER_BYTES < 8 * len(padded) / 30, inflated[0]
    buf = io.BytesIO()  # a JPEG whose size comes after 200 KB of colour profile: read from the whole file
    Image.new("RGB", (12, 10)).save(buf, "JPEG", icc_profile=bytes(200_000))
    deep = tmp_path / "deep.zip"
    with zipfile.ZipFile(deep, "w") as f:
        for i in range(4):
            f.writestr(f"{'ab'[i % 2]}/{i}.jpg", buf.getvalue())
    assert [h.size for h in scan_folder(deep, 8, Limits.from_env(error=DataUnavailable)).splits["train"]] == [(12, 10)] * 4


def test_small_sides_exif_windows_names_and_single_images(tmp_path):
    def zip_of(name, entries):
        z = tmp_path / name
        with zipfile.ZipFile(z, "w") as f:
            for n, b in entries:
                f.writestr(n, b)
        return f"folder:{z}"
    with pytest.raises(DataUnavailable, match=r"'a/0.png' is 1x1 px: images need at least 4 px per side"):
        load_user_dataset(zip_of("one.zip", [("a/0.png", image_bytes(1, "L", "PNG")), ("b/0.png", image_bytes(8, "L", "PNG"))]))
    windows = [(f"{c}\\{i}.png", image_bytes(8, "L", "PNG")) for c in "ab" for i in range(3)]
    assert load_user_dataset(zip_of("win.zip", windows))[4] == ["a", "b"]  # backslashes are folders, not traversal
    with pytest.raises(DataUnavailable, match="outside the archive"):
        load_user_dataset(zip_of("evil.zip", windows + [("..\\..\\x.png", b"x")]))
    with pytest.raises(DataUnavailable, match="class 'b' has 1 image: a class needs at least 2"):
        load_user_dataset(zip_of("single.zip", [("a/0.png", image_bytes(8, "L", "PNG")), ("a/1.png", image_bytes(8, "L", "PNG")),
                                                ("b/0.png", image_bytes(8, "L", "PNG"))]))
    # EXIF orientation: a 8x16 portrait saved landscape with "rotate 90" comes out upright
    tall = np.zeros((16, 8), np.uint8)
    tall[:8] = 255  # white top half
    img = Image.fromarray(np.ascontiguousarray(np.rot90(tall)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=100)
    x = load_user_dataset(zip_of("exif.zip", [(f"{c}/{i}.jpg", buf.getvalue()) for c in "ab" for i in range(3)]),
                          image_size=8)[0]
    assert x[0, 0, 1, 4] > 0.8 and x[0, 0, 6, 4] < 0.2  # bright at the top, dark at the bottom: upright


def test_only_regular_files_are_opened(tmp_path):
    with pytest.raises(DataUnavailable, match="zero is not a regular file"):
        load_user_dataset("folder:/dev/zero")
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    for c in "ab":
        for i in range(3):
            (tmp_path / "d" / c / f"{i}.png").write_bytes(image_bytes(8, "L", "PNG"))
    (tmp_path / "d" / "a" / "3.png").symlink_to("/dev/zero")  # a link to a device: never read
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")  # a link back up: not walked
    x, y, xt, *_ = load_user_dataset(f"folder:{tmp_path / 'd'}")
    assert len(y) + len(xt) == 6


def test_bundle_contents_are_checked_like_a_config(good, tmp_path):
    """Each field a crafted bundle could get wrong is one line naming the file and the field."""
    def stage(f, name, **changes):
        d = torch.load(io.BytesIO(f[name]), weights_only=True)
        d.update(changes)
        buf = io.BytesIO()
        torch.save(d, buf)
        f[name] = buf.getvalue()
    cases = [
        (lambda m, f: stage(f, "union_1.pt", images=torch.zeros(3, 1, 9, 9)), "union_1.pt in b.zip: images should be float32 of shape (N, 1, 8, 8)"),
        (lambda m, f: stage(f, "union_1.pt", images=torch.full((10, 1, 8, 8), math.nan)), "images hold NaN"),
        (lambda m, f: stage(f, "union_1.pt", labels=torch.arange(10) + 5), "labels should lie in [0, 10)"),
        (lambda m, f: stage(f, "union_1.pt", labels=torch.zeros(3, dtype=torch.int64)), "labels should be int64 of length 10"),
        (lambda m, f: stage(f, "stage_1/images.pt", labels=torch.zeros(10)), "labels should be int64"),
        (lambda m, f: m["evaluation"].update(width=100000), "evaluation.width is invalid (width must be <= 1024"),
        (lambda m, f: m["evaluation"].update(depth=-1), "evaluation.depth is invalid (depth must be >= 1"),
        (lambda m, f: m["evaluation"].update(batch=0), "evaluation.batch is invalid"),
        (lambda m, f: m["evaluation"].update(epochs=10 ** 9), "evaluation.epochs is invalid"),
        (lambda m, f: m["evaluation"].update(models=10 ** 9), "evaluation.models is invalid"),
        (lambda m, f: m["evaluation"].update(dsa_strategy="warp"), "evaluation.dsa_strategy is invalid (unknown augmentation(s) ['warp'] in it)"),
        (lambda m, f: m["evaluation"].update(dsa_strategy="flip_" * 10 ** 5 + "crop"), "['flip'] named more than once in it"),
        (lambda m, f: m["evaluation"].update(lr=-1), "evaluation.lr is invalid"),
        (lambda m, f: m["evaluation"].update(norm="layer"), "evaluation.norm is invalid"),
        (lambda m, f: m["evaluation"].update(family="vit"), "evaluation.family is 'vit'"),
        (lambda m, f: m["stage_entries"][0].update(eval_lr=-0.1), "stage_entries[0].eval_lr is -0.1"),
        (lambda m, f: m.update(stage_entries=m["stage_entries"] * 60), "has 120 stage entries, over the limit of 100"),
        (lambda m, f: m["stage_entries"][0].update(accuracy={"x": 1}), "stage_entries[0].accuracy.mean is missing"),
        (lambda m, f: m["stage_entries"][1]["accuracy"].update(mean=[0] * 1000),  # tables would scale it in memory
         "stage_entries[1].accuracy.mean should be int or float, not list"),
        (lambda m, f: m["stage_entries"][0]["random_subset_accuracy"].update(std="x"),
         "stage_entries[0].random_subset_accuracy.std should be int or float, not str"),
        (lambda m, f: m["stage_entries"][0]["accuracy"].update(mean=10 ** 400),  # overflowed the float it is shown as
         "stage_entries[0].accuracy.mean should be a fraction in [0, 1]"),
        (lambda m, f: m["stage_entries"][1].update(cumulative_images_per_class=2 ** 64),  # past plotly's integers
         "stage_entries[1].cumulative_images_per_class should be between 1 and 1,000,000"),
    ]
    for change, words in cases:
        with pytest.raises(BundleError) as e:
            load_bundle(good_bundle(good, tmp_path, change))
        assert words in str(e.value) and one_line(e.value), (words, str(e.value))
    path = tmp_path / "dup.zip"
    write_zip(path, good[0], good[1], duplicate=True)
    with pytest.raises(BundleError, match="holds .* twice"):
        load_bundle(path)
    write_zip(path, good[0], {**good[1], "extra.bin": b"x"})  # a file the manifest does not list
    with pytest.raises(BundleError, match="holds 'extra.bin', which its manifest does not list"):
        load_bundle(path)


def test_a_manifest_integer_longer_than_python_reads_is_refused_in_one_line(good, tmp_path):
    """JSON allows an integer of any length; Python refuses to read one of over 4,300 digits with a ValueError
    that is not a JSONDecodeError: it is the one-line "not JSON" refusal, not a traceback."""
    m, f = json.loads(json.dumps(good[0])), dict(good[1])
    m["files"] = {n: __import__("hashlib").sha256(b).hexdigest() for n, b in f.items()}
    m["ipc"] = "LONG"
    path = tmp_path / "long.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(m).replace('"LONG"', "9" * 5000))
        for n, b in f.items():
            z.writestr(n, b)
    with pytest.raises(BundleError, match="is not JSON") as e:
        load_bundle(path)
    assert one_line(e.value)


def test_a_bundles_warnings_are_one_printable_bounded_line_each(good, tmp_path, capsys):
    """A shared bundle's matching_warning is someone else's text shown to whoever evaluates it: each becomes one
    line with no terminal escape, bidirectional override, NUL, lone surrogate or line break of its own, within
    a bound the stage number cannot stretch; what is not text is left out (the CLI prints them)."""
    import unicodedata

    from pdd_engine.__main__ import main
    from pdd_engine.errors import UNSHOWN
    from pdd_engine.manifest import WARNING_CHARS, stage_warnings
    hostile = ["\x1b[2J\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\ \x1b]0;title\x07",
               "fine\rERROR: your data was deleted\nwarning: forged line\u202egnp.exe\x00", "x\ud800y" + "z" * 5000]

    def change(m, f):
        m["stage_entries"][0]["matching_warning"] = hostile[0]
        m["stage_entries"][1]["matching_warning"] = hostile[1]
        m["stage_entries"].append({**m["stage_entries"][1], "stage": 3, "matching_warning": hostile[2]})
        m["stage_entries"].append({**m["stage_entries"][1], "matching_warning": {"not": "text"}})
    path = good_bundle(good, tmp_path, change)
    shown = stage_warnings(load_bundle(path).manifest)
    assert [w.split(":")[0] for w in shown] == ["stage 1", "stage 2", "stage 3"]
    for w in shown:
        assert not any(unicodedata.category(c) in UNSHOWN for c in w) and len(w) <= WARNING_CHARS + len("stage 3: ")
    huge = {"stage_entries": [{"stage": 10 ** 4000, "matching_warning": "x"}]}  # refused by load_bundle; never long
    assert stage_warnings(huge) == ["stage ?: x"]
    assert "ERROR: your data was deleted warning: forged line" in shown[1]
    assert main(["evaluate", str(path), "--epochs", "1", "--models", "1"]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "\x00" not in err and err.count("warning: stage") == 3
    refused = good_bundle(good, tmp_path, lambda m, f: m["evaluation"].update(family="\x1b[2Jvit\n# forged\ud800"),
                          name="refused.zip")  # an error quoting the bundle: one printable line too
    assert main(["evaluate", str(refused)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the manifest") and err.count("\n") == 1 and "\x1b" not in err and "\ud800" not in err
