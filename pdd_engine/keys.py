"""Cache keys, derived from one table of what determines each stored artefact.

Every artefact the engine stores (a stage, a curriculum evaluation, the random baseline, a method's
memo such as MTT's expert trajectories, a run record) is keyed by the sha256 of exactly the inputs
that determine it: the engine's key version, the dataset's content fingerprint (taken after
subsampling and resizing), the config fields in :func:`table`, and, for per-stage artefacts, the stage
index and the key of the union U_{i-1} it builds on. Nothing else may go into a key, and nothing
that changes a result may stay out: ``tests/test_keys.py`` walks every config field and checks that
changing it changes exactly the keys the table says it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

from .version import __version__
from .config import DistillConfig, digest
from .device import resolved
from .evaluate import EvalProtocol
from .methods import REGISTRY, get_method

# Bump when what a stored value means changes without any input changing (a bug fix in a method).
KEY_VERSION = f"{__version__}+keys5"  # keys5: 28 px one-channel ConvNets pad their first conv by 3

# Fields that change where or how fast work runs, not what it computes: in no key.
# (A method's own hyper-parameters say so in their Params: ``param(..., semantic=False)``.)
NON_SEMANTIC = frozenset({"device", "executor", "data_root", "cache_dir", "max_memory_gb", "eval_batched"})

DATA = ("dataset", "image_size", "max_train", "zca")  # with the content fingerprint
MODEL = ("depth", "width", "norm")  # depth resolved for the input size
# What a stage context is (before the method's own fields): the real data and its augmentation,
# the network, the seeds. From stage 2 on also the transition that brings networks to U_{i-1}.
CONTEXT = DATA + MODEL + ("seed", "dsa_strategy")
TRANSITION = ("transition", "transition_epochs", "eval_lr", "eval_batch")
LATER = ("later_iterations", "later_lr_scale")  # a later stage's own schedule (stage 1 reads neither)
# The curriculum evaluation protocol (EvalProtocol.from_config reads exactly these).
EVAL = MODEL + ("seed", "eval_epochs", "eval_models", "eval_lr", "eval_batch", "eval_dsa", "dsa_strategy",
               "eval_precision")
# The easy-example filter's scorers train with the evaluation protocol (only when filter_easy is on).
FILTER = ("keep_easy", "filter_models", "eval_epochs", "eval_models", "eval_lr", "eval_batch", "eval_dsa",
          "eval_precision")
STAGE = CONTEXT + ("method", "iterations", "lr_img", "init", "ipc", "filter_easy", "precision")  # "ipc": per stage
RUN = EVAL + ("stages", "compare_base", "compare_epochs")

# Inputs hashed as a resolved value rather than as the raw field: name -> (fields it reads, value
# for a config, an input size and the stage the key is for).
Resolve = Callable[[DistillConfig, int, int], Any]
DERIVED: dict[str, tuple[tuple[str, ...], Resolve]] = {
    "depth": (("depth",), lambda c, size, i: c.depth_for(size)),
    "lr_img": (("lr_img", "method"), lambda c, size, i: c.effective_lr_img),
    # the method's hyper-parameters, automatic values resolved (its Params and key_params)
    "params": (("params",), lambda c, size, i: get_method(c.method).key_params(c, size)),
    # stage i's images per class and where they start: a longer run (or one with the same first
    # stages of a schedule) shares the prefix
    "ipc": (("ipc", "stages", "stage_ipc"), lambda c, size, i: (c.cum_ipc(i - 1), c.ipc_at(i))),
}


def table(cfg: DistillConfig, stage: int = 2) -> dict[str, tuple[str, ...]]:
    """The declarative table: artefact -> the config fields that determine it, for ``cfg`` at ``stage``.

    Per-stage artefacts also hash the stage index and U_{i-1}'s key; evaluations hash their stage's
    key; the run record hashes its last stage's key.
    """
    method = get_method(cfg.method)  # its memos declare the hyper-parameters each depends on
    later = TRANSITION if stage > 1 else ()
    stage_fields = STAGE + later + (LATER if stage > 1 else ()) + ("params",) + (FILTER if cfg.filter_easy else ())
    out = {"stage": stage_fields, "eval": EVAL, "random": DATA + EVAL + ("ipc",), "context": CONTEXT + later,
           "run": RUN}
    for name, memo_fields in method.memos.items():
        out[f"memo:{name}"] = CONTEXT + later + tuple(f"params.{f}" for f in memo_fields)
    return out


def inputs(cfg: DistillConfig, names: tuple[str, ...], size: int, stage: int) -> dict[str, Any]:
    """The values of ``names`` as they enter a key (derived names resolved for ``size``-pixel inputs;
    ``params.x``: the method's hyper-parameter ``x``)."""
    return {n: DERIVED[n][1](cfg, size, stage) if n in DERIVED else getattr(cfg.params, n[7:]) if n.startswith("params.")
            else getattr(cfg, n) for n in sorted(set(names))}


def fields_read(names: tuple[str, ...], cfg: Optional[DistillConfig] = None) -> set[str]:
    """The raw config fields behind ``names`` (a derived name reads several). With ``cfg``,
    ``params`` stands for each hyper-parameter of its method that changes results, as ``params.<name>``."""
    out = set()
    for n in names:
        if n == "params" and cfg is not None:
            out |= {f"params.{k}" for k in cfg.params.semantic()}
        else:
            out |= set(DERIVED[n][0] if n in DERIVED else (n,))
    return out


def unclassified() -> set[str]:
    """Config fields that feed no artefact and are not declared non-semantic (must be empty). A
    method's hyper-parameters all feed its stage keys through ``params`` (bar those it marks
    non-semantic); its memos must name real hyper-parameters."""
    every = set(STAGE + TRANSITION + LATER + EVAL + FILTER + RUN + DATA + ("params",))
    missing = {f.name for f in fields(DistillConfig)} - fields_read(tuple(every)) - NON_SEMANTIC
    for name, cls in REGISTRY.items():
        missing |= {f"{name}.{f}" for fs in cls.memos.values() for f in fs if f not in cls.Params.names()}
    return missing


@dataclass(frozen=True)
class Keys:
    """Content-hash keys of everything a run of ``cfg`` stores, for a dataset of ``size`` pixels."""

    cfg: DistillConfig
    fingerprint: str
    size: int

    @classmethod
    def of(cls, cfg: DistillConfig, ds) -> "Keys":
        """The keys of ``cfg`` as it runs here (auto arithmetic resolved) on ``ds``."""
        return cls(resolved(cfg), ds.fingerprint, ds.size)

    def _hash(self, kind: str, at: int, **extra: Any) -> str:
        names = table(self.cfg, at)[kind]
        return digest({"v": KEY_VERSION, "kind": kind, "data": self.fingerprint,
                       "fields": inputs(self.cfg, names, self.size, at), **extra})

    def stage(self, i: int) -> str:
        """S_i: its images, labels, learned lr and the real-image mask later stages match against."""
        prefix = self.stage(i - 1) if i > 1 else ""
        filters = self.cfg.filter_easy and i < self.cfg.stages
        return "stage:" + self._hash("stage", i, i=i, prefix=prefix, filters=filters)

    def eval(self, i: int) -> str:
        """The curriculum evaluation's state after U_i (it resumes from U_{i-1}'s, inside stage i's key)."""
        return "eval:" + self._hash("eval", i, stage=self.stage(i), protocol=self._protocol())

    def repeated(self, j: int) -> str:
        """The curriculum evaluation of S_1 as every union, j stages long (j x the evaluation epochs): on the
        base method's keys, its P = 1 images trained as long as a j-stage curriculum (it resumes from j - 1's)."""
        return "eval:" + self._hash("eval", 1, stage=self.stage(1), protocol=self._protocol(), repeat=j)

    def random(self, i: int) -> str:
        return "random:" + self._hash("random", i, i=i, protocol=self._protocol())

    def context(self, i: int) -> str:
        """What a method sees at stage i before its own fields: data, network, seeds, transition, U_{i-1}."""
        return "context:" + self._hash("context", i, i=i, prefix=self.stage(i - 1) if i > 1 else "")

    def memo(self, name: str, i: int) -> str:
        """A method's cached artefact ``name`` at stage i (MTT: ``experts``)."""
        return f"memo:{name}:" + self._hash(f"memo:{name}", i, context=self.context(i))

    def base(self, i: int) -> "Keys":
        """Keys of the base method alone (P = 1) at the IPC PDD has after stage ``i``."""
        return Keys(self.cfg.base_config(i), self.fingerprint, self.size)

    @property
    def run(self) -> str:
        return "run:" + self._hash("run", self.cfg.stages, last=self.stage(self.cfg.stages))

    def _protocol(self) -> dict:
        return EvalProtocol.from_config(self.cfg, self.size).to_dict()
