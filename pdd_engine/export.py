"""Export bundles: a zip that carries a run's synthetic sets and everything needed to use them.

Layout::

    manifest.json                 dataset, classes, normalisation/ZCA, model, eval protocol, per-stage
                                  accuracies, config, hashes, versions, and a sha256 for every file
    stage_<i>/images.pt|.npz      S_i as stored (model space), labels, learned lr (MTT)
    stage_<i>/train_images.*      S_i as a network trains on it (differs from stored for IDC only)
    union_<i>.pt|.npz             U_i = S_1 ∪ .. ∪ S_i in training form: what evaluation stage i trains on
    png/stage_<i>/<class>/<k>.png S_i de-normalised to viewable pixels
    zca.npz                       ZCA mean, matrix and inverse (when whitening is on)

``.pt`` files hold plain tensor dicts: ``torch.load(path, weights_only=True)`` reads them.
"""

from __future__ import annotations

import hashlib
import io
import math
import json
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .version import __version__
from .cache import Store
from .config import DistillConfig, augmentation_problem, check_precision, declarations
from .data import Dataset, dataset_for, dataset_info, to_uint8
from .device import resolve_device, resolved, tune_allocator
from .errors import BundleError, ConfigError, PDDError
from .files import atomic
from .evaluate import EvalProtocol, arch_changes, make_curriculum
from .keys import Keys
from . import manifest as manifests
from .records import eval_check, stage_check
from .methods import get_method
from .registry import base_type, check_cap, check_value
from .untrusted import Limits, SafeZip, over_limit

FORMAT = "pdd-studio-bundle"
FORMAT_VERSION = 1


def _pt(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def _npz(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                                for k, v in arrays.items()})
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    img = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def collect(cfg: DistillConfig, store: Store, ds: Dataset) -> tuple[list, list, list, list, list]:
    """The stored stage, eval, random-baseline, base-method and epoch-matched base-method records of a
    finished run (the last two None where the run did not compare), or a clear error."""
    keys = Keys.of(cfg, ds)
    evals_ok = eval_check(EvalProtocol.from_config(cfg, ds.size))
    stages, evals, randoms, bases, matched = [], [], [], [], []
    for i in range(1, cfg.stages + 1):
        recs = [store.get(keys.stage(i), stage_check(ds, cfg, i)), store.get(keys.eval(i), evals_ok),
                store.get(keys.random(i), evals_ok)]
        if any(r is None for r in recs):
            raise PDDError(f"stage {i} of this run is not finished (not in the cache)",
                           "run `python -m pdd_engine distill` with the same settings first; it resumes")
        stages.append(recs[0])
        evals.append(recs[1][1]["acc"])
        randoms.append(recs[2][1]["acc"])
        compared = i in cfg.base_stages()
        base = store.get(keys.base(i).eval(1), evals_ok) if compared else None
        bases.append(None if base is None else base[1]["acc"])
        longer = store.get(keys.base(i).repeated(i), evals_ok) if compared and cfg.compare_epochs and i > 1 else None
        matched.append(None if longer is None else longer[1]["acc"])
    return stages, evals, randoms, bases, matched


def _acc(values: Optional[list[float]]) -> Optional[dict[str, Any]]:
    return None if values is None else {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_model": values}


def build_manifest(cfg: DistillConfig, ds: Dataset, stages: list, evals: list, randoms: list,
                   bases: list, matched: list) -> dict[str, Any]:
    proto = EvalProtocol.from_config(cfg, ds.size)
    keys = Keys.of(cfg, ds)
    notes = get_method(cfg.method).manifest(cfg, ds.size)  # what the method says about its images
    stage_entries = []
    for i, ((t, meta), acc, racc, bacc, eacc) in enumerate(zip(stages, evals, randoms, bases, matched), start=1):
        stage_entries.append({
            "stage": i, "images_per_class": cfg.ipc_at(i), "cumulative_images_per_class": cfg.cum_ipc(i),
            "stored": f"stage_{i}/images.pt", "train": f"stage_{i}/train_images.pt", "union": f"union_{i}.pt",
            "stored_shape": list(t["stored"].shape), "train_shape": list(t["train_x"].shape),
            "learned_lr": meta["lr"], "eval_lr": meta["lr"] or proto.lr,
            "accuracy": _acc(acc), "random_subset_accuracy": _acc(racc),
            "base_method_accuracy": _acc(bacc),  # the base method alone (P = 1) at this IPC, if the run compared
            # its images trained for as many epochs as the curriculum up to this stage, if the run compared
            "base_method_same_epochs_accuracy": _acc(eacc), "base_method_same_epochs": i * proto.epochs,
            "distill_seconds": meta["seconds"], "real_examples_kept": meta["real_kept"],
            # what the run warned of about this stage's matching (an unstable MTT matching), else None
            "matching_warning": get_method(cfg.method).health(cfg, meta["losses"], meta["lr"]),
        })
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_key": keys.run, "stage_keys": [keys.stage(i) for i in range(1, cfg.stages + 1)],
        "config": cfg.to_dict(), "method": cfg.method, "stages": cfg.stages, "ipc": cfg.ipc,
        "dataset": dataset_info(ds),
        "normalisation": {
            "mean": list(ds.mean), "std": list(ds.std), "zca": "zca.npz" if ds.zca is not None else None,
            "how": "model input = ZCA((pixels_in_[0,1] - mean) / std) if zca else (pixels - mean) / std; "
                   "images in .pt/.npz are already in model space, PNGs are de-normalised pixels",
        },
        "augmentation": {"evaluation": proto.dsa_strategy, "matching": notes["matching_augmentation"],
                         "mode": "DSA, one op per call: matching draws one transform for the whole real and synthetic "
                                 "batch of a class (siamese); training draws parameters per sample"},
        "transition": {"mode": cfg.transition, "epochs": cfg.transition_epochs,
                       "note": "chain: stage i's networks are one network trained on union_1, union_2, ... union_{i-1} "
                               "(each at its stage's lr, fresh SGD); fresh: a new network trained on union_{i-1}"},
        "resolved": notes["resolved"],
        "easy_example_filter": {"enabled": cfg.filter_easy, "keep_easy": cfg.keep_easy, "scorers": cfg.filter_models,
                                "note": "real examples all scorers (trained on U_i) classify correctly are kept with "
                                        "probability keep_easy in the pool stage i+1 matches against"},
        "model": {"family": "convnet", "depth": cfg.depth_for(ds.size), "width": cfg.width, "norm": cfg.norm},
        "evaluation": {**proto.to_dict(), "curriculum": "fresh networks train eval_epochs on union_1, then continue "
                       "(optimizer state carried) on union_2, ...; lr x0.1 after half of each stage; accuracy on "
                       "the test split after each stage", "test_examples": len(ds.y_test)},
        "training_form": notes["training_form"],
        "stage_entries": stage_entries,
        "versions": {"pdd_engine": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def export_bundle(cfg: DistillConfig, out: str | Path, store: Optional[Store] = None,
                  ds: Optional[Dataset] = None, flag: str = "--out") -> Path:
    """Write the bundle of a finished run (all stages cached) to ``out`` (a .zip path), whole or not at all
    (``flag``: how the user chose that path, named when the disk is full)."""
    cfg = resolved(cfg)  # what the run computed with (auto arithmetic resolved): its keys and its manifest
    store = store if store is not None else Store(cfg.cache_dir)
    ds = ds if ds is not None else dataset_for(cfg)
    stages, evals, randoms, bases, matched = collect(cfg, store, ds)
    files: dict[str, bytes] = {}
    union_x, union_y = [], []
    for i, (t, meta) in enumerate(stages, start=1):
        lr = torch.tensor(meta["lr"] if meta["lr"] is not None else float("nan"))
        files[f"stage_{i}/images.pt"] = _pt({"images": t["stored"], "labels": t["labels"], "lr": lr})
        files[f"stage_{i}/images.npz"] = _npz({"images": t["stored"], "labels": t["labels"], "lr": lr})
        files[f"stage_{i}/train_images.pt"] = _pt({"images": t["train_x"], "labels": t["train_y"]})
        files[f"stage_{i}/train_images.npz"] = _npz({"images": t["train_x"], "labels": t["train_y"]})
        union_x.append(t["train_x"])
        union_y.append(t["train_y"])
        ux, uy = torch.cat(union_x), torch.cat(union_y)
        files[f"union_{i}.pt"] = _pt({"images": ux, "labels": uy, "lr": lr})
        files[f"union_{i}.npz"] = _npz({"images": ux, "labels": uy, "lr": lr})
        pixels = to_uint8(ds, t["stored"])
        counts: dict[int, int] = {}
        for px, label in zip(pixels, t["labels"].tolist()):
            k = counts[label] = counts.get(label, -1) + 1
            files[f"png/stage_{i}/{safe_name(ds.classes[label])}/{k}.png"] = _png(px)
    if ds.zca is not None:
        files["zca.npz"] = _npz({"mean": ds.zca.mean, "matrix": ds.zca.matrix, "inverse": ds.zca.inverse})
    manifest = manifests.portable(build_manifest(cfg, ds, stages, evals, randoms, bases, matched))
    manifest["files"] = {name: hashlib.sha256(b).hexdigest() for name, b in sorted(files.items())}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic(out, flag) as part, zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=2))
        for name, blob in files.items():
            z.writestr(name, blob)
    return out


def safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return keep or "class"


@dataclass
class Bundle:
    manifest: dict[str, Any]
    unions: list[dict[str, torch.Tensor]]  # per stage: images, labels (training form), lr
    stages: list[dict[str, torch.Tensor]]  # per stage: stored images, labels, lr

    @property
    def config(self) -> DistillConfig:
        return DistillConfig.from_dict(self.manifest["config"])


BUNDLE_FIX = "export the run again with `pdd distill ... --out RUN.zip` (or download it again from the studio)"
# the manifest's evaluation protocol -> the config field whose declaration bounds it (one source of bounds)
PROTOCOL = {"epochs": "eval_epochs", "models": "eval_models", "lr": "eval_lr", "batch": "eval_batch", "seed": "seed",
            "depth": "depth", "width": "width", "norm": "norm", "precision": "eval_precision"}


def load_bundle(path: str | Path, limits: Optional[Limits] = None) -> Bundle:
    """Read and verify a bundle (everything in it is untrusted): bounded before it is read (entries, sizes,
    the manifest), every listed file checksummed, nothing unlisted, the manifest's protocol checked against
    the config's declarations and every tensor against the manifest's dataset. Any failure is one
    :class:`BundleError` line naming the file and the field."""
    path = Path(path)
    limits = limits or Limits.from_env(error=BundleError)
    if not path.exists():
        raise BundleError(f"{path.name or path} does not exist", "give the path of a bundle .zip")
    with SafeZip(path, limits, BundleError, BUNDLE_FIX) as z:
        if "manifest.json" not in z.members:
            raise BundleError(f"{path.name} has no manifest.json: not a PDD Studio bundle", BUNDLE_FIX)
        try:
            manifest = json.loads(z.read("manifest.json", limits.manifest_bytes, "manifest_bytes"))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or an integer of more digits than Python reads
            raise BundleError(f"the manifest of {path.name} is not JSON", BUNDLE_FIX) from None
        check_manifest(manifest, path.name, limits)
        unlisted = sorted(set(z.members) - set(manifest["files"]) - {"manifest.json"})
        if unlisted:
            raise BundleError(f"{path.name} holds '{unlisted[0]}', which its manifest does not list", BUNDLE_FIX)
        needed = {e[k] for e in manifest["stage_entries"] for k in ("union", "stored")}
        blobs = {}
        for name, sha in manifest["files"].items():
            if name not in z.members:
                raise BundleError(f"{path.name} is missing {name}", BUNDLE_FIX)
            blob = z.read(name)
            if hashlib.sha256(blob).hexdigest() != sha:
                raise BundleError(f"{name} in {path.name} is corrupt (checksum mismatch)", BUNDLE_FIX)
            if name in needed:  # the rest (PNGs, npz twins) checked and let go
                blobs[name] = blob
    d = manifest["dataset"]
    shape, classes = (d["channels"], d["size"], d["size"]), len(d["classes"])
    unions = [tensors_of(blobs[e["union"]], e["union"], path.name, shape, classes) for e in manifest["stage_entries"]]
    stored = [tensors_of(blobs[e["stored"]], e["stored"], path.name, shape, classes) for e in manifest["stage_entries"]]
    return Bundle(manifest, unions, stored)


def check_manifest(m: Any, bundle: str, limits: Limits) -> None:
    """The manifest's format, shape (manifest.check), stage count, dataset facts and evaluation protocol."""
    found = m.get("format") if isinstance(m, dict) else None
    if found != FORMAT:
        raise BundleError(f"{bundle} is not a PDD Studio bundle (format {found!r})", BUNDLE_FIX)
    if isinstance(m.get("format_version"), int) and m["format_version"] > FORMAT_VERSION:
        raise BundleError(f"{bundle} was written by a newer PDD Studio (format {m['format_version']})", "upgrade pdd_engine")
    manifests.check(m, bundle, BUNDLE_FIX)
    bad = lambda field, why: BundleError(f"the manifest of {bundle} is malformed: {field} {why}", BUNDLE_FIX)  # noqa: E731
    try:  # the run's config, as strictly as any config (its dataset, method and every bound)
        DistillConfig.from_dict({**m["config"], "data_root": None, "cache_dir": None})
    except (ConfigError, TypeError, AttributeError) as e:
        raise bad("config", f"is invalid ({e.problem if isinstance(e, ConfigError) else type(e).__name__})") from None
    if len(m["stage_entries"]) > limits.bundle_stages:
        raise over_limit(f"{bundle} has {len(m['stage_entries']):,} stage entries", "bundle_stages",
                         f"{limits.bundle_stages:,}", BundleError, "use a bundle with fewer stages")
    d = m["dataset"]
    if d["channels"] not in (1, 3):
        raise bad("dataset.channels", f"is {d['channels']}, not 1 or 3")
    if not 4 <= d["size"] <= 128:
        raise bad("dataset.size", f"is {d['size']}, not from 4 to 128")
    if not 2 <= len(d["classes"]) <= 10 ** 4:
        raise bad("dataset.classes", f"has {len(d['classes'])} classes")
    e = m["evaluation"]
    decl = {name: (t, meta) for name, t, _, meta in declarations()}
    for key, name in PROTOCOL.items():
        t, meta = decl[name]
        try:
            check_value(name, e.get(key, "float32" if key == "precision" else None), base_type(t)[0], meta)
        except ConfigError as err:
            raise bad(f"evaluation.{key}", f"is invalid ({err.problem})") from None
    if e["family"] not in ("convnet", "resnet"):
        raise bad("evaluation.family", f"is '{e['family']}', not convnet or resnet")
    for key, low, high in (("momentum", 0.0, 1.0), ("weight_decay", 0.0, 1.0)):
        if not (math.isfinite(e[key]) and low <= e[key] < high):
            raise bad(f"evaluation.{key}", f"is {e[key]}, not in [{low:g}, {high:g})")
    if problem := augmentation_problem(e["dsa_strategy"] or "none", "it", auto=False):
        raise bad("evaluation.dsa_strategy", f"is invalid ({problem[0]})")
    for i, entry in enumerate(m["stage_entries"]):
        if not (math.isfinite(entry["eval_lr"]) and entry["eval_lr"] > 0):
            raise bad(f"stage_entries[{i}].eval_lr", f"is {entry['eval_lr']}, not a positive number")


def tensors_of(blob: bytes, name: str, bundle: str, shape: tuple, classes: int) -> dict[str, torch.Tensor]:
    """A stage file's tensor dict, checked against the manifest's dataset: float32 images (N, C, H, W) with
    finite values, int64 labels of length N in [0, classes)."""
    try:
        t = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as e:  # a checksummed file that is not a tensor dict: crafted, not damaged in transit
        raise BundleError(f"{name} in {bundle} is not a tensor file ({type(e).__name__})", BUNDLE_FIX) from None
    where = f"{name} in {bundle}"
    if not isinstance(t, dict) or not {"images", "labels"} <= set(t):
        raise BundleError(f"{where} should hold images and labels", BUNDLE_FIX)
    x, y = t["images"], t["labels"]
    if not torch.is_tensor(x) or x.dtype != torch.float32 or x.dim() != 4 or tuple(x.shape[1:]) != shape or not len(x):
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise BundleError(f"{where}: images should be float32 of shape (N, {', '.join(map(str, shape))}), not {got}",
                          BUNDLE_FIX)
    if not bool(torch.isfinite(x).all()):
        raise BundleError(f"{where}: images hold NaN or infinite values", BUNDLE_FIX)
    if not torch.is_tensor(y) or y.dtype != torch.int64 or tuple(y.shape) != (len(x),):
        got = f"{y.dtype} {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise BundleError(f"{where}: labels should be int64 of length {len(x)}, not {got}", BUNDLE_FIX)
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise BundleError(f"{where}: labels should lie in [0, {classes}), not [{int(y.min())}, {int(y.max())}]", BUNDLE_FIX)
    return t


def evaluate_bundle(path: str | Path, arch: Optional[str] = None, epochs: Optional[int] = None,
                    models: Optional[int] = None, device: str = "auto", data_root: Optional[str] = None,
                    batched: Optional[bool] = None, data: Optional[str] = None,
                    precision: Optional[str] = None, caps: bool = False) -> list[list[float]]:
    """Re-run the manifest's evaluation protocol on the bundle; optionally on another architecture, or in
    another arithmetic (``precision``: float32 or bfloat16; default the manifest's, float32 before it said).
    ``caps``: refuse a protocol over the server's maxima (epochs, networks, width), as the studio does.

    Where the data is comes from the caller only: ``data`` (the user's own folder or .zip, for a
    bundle made on user data) and ``data_root`` (where built-in sets live); never from the manifest."""
    bundle = load_bundle(path)
    m = bundle.manifest
    cfg = bundle.config.replace(dataset=manifests.dataset_to_read(bundle.config.dataset, data),
                                data_root=data_root, cache_dir=None)
    ds = dataset_for(cfg)
    if ds.fingerprint != m["dataset"]["fingerprint"]:
        raise BundleError(f"the local '{cfg.dataset}' data differs from the data this bundle was made on",
                          "evaluate on the same data (same files, image_size and max_train)")
    proto = EvalProtocol(**{k: v for k, v in m["evaluation"].items() if k in EvalProtocol.__dataclass_fields__})
    changes = {}
    if epochs:
        changes["epochs"] = epochs
    if models:
        changes["models"] = models
    if arch:
        changes.update(arch_changes(arch))
    if precision:
        check_precision("precision", precision)
        changes["precision"] = precision
    proto = EvalProtocol(**{**proto.to_dict(), **changes})
    decl = {name: meta for name, _, _, meta in declarations()}
    for key, name in (("epochs", "eval_epochs"), ("models", "eval_models"), ("width", "width"), ("depth", "depth")):
        check_value(name, getattr(proto, key), int, decl[name])  # bounds for everyone
        if caps:
            check_cap(name, getattr(proto, key), decl[name])
    tune_allocator()
    cur = make_curriculum(ds, proto, resolve_device(device), cfg.eval_batched if batched is None else batched)
    return [cur.train_stage(u["images"], u["labels"], e["eval_lr"]) for u, e in zip(bundle.unions, m["stage_entries"])]


def stage_archive(bundle_path: str | Path, stage: int, out: str | Path, flag: str = "--out") -> Path:
    """A small zip with one stage's images alone (tensors, PNGs and the manifest) cut from a bundle."""
    out = Path(out)
    with zipfile.ZipFile(bundle_path) as src, atomic(out, flag) as part, \
            zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            if name == "manifest.json" or name.startswith((f"stage_{stage}/", f"png/stage_{stage}/")):
                dst.writestr(name, src.read(name))
    return out
