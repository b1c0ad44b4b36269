"""What a DSA strategy names: its operations, the field's strategy and what ``auto`` becomes on a dataset.

Pure standard library: the config reads it, and so do the benchmark rows' labels (``results.setup``),
which the studio's web process shows without importing the engine.
"""

from __future__ import annotations

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
FIELD_STRATEGY = "_".join(DSA_OPS)  # the field's strategy (DC/DSA, DM, MTT on every dataset)


def strategy_ops(strategy: str) -> tuple[str, ...]:
    """A DSA strategy's operations: names joined by '_'; 'none' (or nothing, in older bundles) for none."""
    return () if strategy in ("", "none") else tuple(strategy.split("_"))


def auto_strategy(mirrors: bool) -> str:
    """What ``dsa_strategy`` ``auto`` is on a dataset: the field's strategy, without flip where a mirror changes
    what an image shows (``mirrors`` False). With flip, IDC's images on MNIST lost 3-6 points to a random subset
    and PDD+MTT on digits fell below its P = 1 (docs/methods.md, *Augmentation*)."""
    return FIELD_STRATEGY if mirrors else "_".join(op for op in strategy_ops(FIELD_STRATEGY) if op != "flip")


def describe(strategy: str) -> str:
    """A short name for a strategy beside the field's: '' for the field's, 'no flip' for ``auto`` on digits,
    else the strategy itself."""
    return "" if strategy == FIELD_STRATEGY else "no flip" if strategy == auto_strategy(False) else f"augmentation {strategy}"
