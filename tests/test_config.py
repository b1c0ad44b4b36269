import pytest

from pdd_engine import DistillConfig, preset
from pdd_engine.config import PRESETS, auto_depth
from pdd_engine.errors import ConfigError


@pytest.mark.parametrize("kw, words", [
    (dict(stages=3, ipc=10), "not divisible"),
    (dict(stages=5, ipc=2), "exceeds IPC"),
    (dict(method="gan"), "unknown method"),
    (dict(dataset="imagenet-1k"), "unknown dataset"),
    (dict(iterations=0), "iterations must be"),
    (dict(eval_models=-1), "eval_models must be"),
    (dict(width=4096), "width"),
    (dict(depth=9), "depth"),
    (dict(keep_easy=1.5), "keep_easy must be <= 1 (got 1.5). Fix: set keep_easy to a value from 0 to 1"),
    (dict(dsa_strategy="color_warp"), "unknown augmentation"),
    (dict(dsa_strategy="color__crop"), "has an empty name"),
    (dict(dsa_strategy=""), "or use 'none' for no augmentation"),
    (dict(dsa_strategy="flip_color_flip"), "['flip'] named more than once in dsa_strategy"),
    (dict(dsa_strategy="color_" * 600 + "crop"), "e.g. color_crop"),
    (dict(dsa_strategy="_".join(f"op{i}" for i in range(600))), "['op0', 'op1', 'op2', 'op3', 'op4'] and more"),
    (dict(dsa_strategy="color_" * 10 ** 5), "dsa_strategy is 600,000 characters long, more than 4,096"),  # upload-sized
    (dict(method="mtt", mtt_unroll="x" * 10 ** 5), "unknown mtt_unroll 'xxxxxxxx"),
    (dict(method="mtt", expert_lr=0), "expert_lr must be > 0"),
    (dict(method="mtt", num_experts=1.5), "num_experts must be a whole number"),
    (dict(method="mtt", mtt_unroll="lazy"), "unknown mtt_unroll 'lazy'"),
    (dict(method="idc", idc_factor=5), "idc_factor must be <= 4"),
    (dict(method="dm", syn_steps=3), "syn_steps is a setting of mtt, not of dm. Fix: leave syn_steps out, or choose "
                                     "method mtt"),
    (dict(method="dm", warp=3), "unknown config field 'warp'"),
    (dict(seed=2 ** 64), "seed must be <= 4294967295 (got 18446744073709551616)"),
    (dict(eval_lr=float("nan")), "eval_lr must be a finite number (got nan)"),
    (dict(lr_img=float("inf")), "lr_img must be a finite number (got inf)"),
    (dict(method="mtt", expert_lr=float("nan")), "expert_lr must be a finite number (got nan)"),
    (dict(keep_easy=float("nan")), "keep_easy must be a finite number (got nan). Fix: set keep_easy to a number from 0 to 1"),
])
def test_bad_values_name_problem_and_fix(kw, words):
    with pytest.raises(ConfigError) as e:
        DistillConfig.make(kw)
    assert words in str(e.value)
    assert "Fix:" in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 1000


def test_divisibility_message_suggests_a_valid_ipc():
    with pytest.raises(ConfigError, match=r"e\.g\. IPC 9 with P=3"):
        DistillConfig(stages=3, ipc=10)


def test_presets_are_valid_and_defaults_are_cpu_sized():
    for name in PRESETS:
        preset(name)
    quick = preset("cpu-quick")
    assert quick.dataset == "digits" and quick.width <= 64 and quick.iterations <= 500
    paper = preset("paper-cifar10-ipc10")
    assert (paper.stages, paper.ipc, paper.params.syn_steps, paper.params.lr_lr, paper.zca) == (5, 10, 50, 1e-7, True)
    with pytest.raises(ConfigError):
        preset("nope")


def test_from_dict_round_trip_and_unknown_field():
    c = DistillConfig(method="mtt", ipc=4, stages=2)
    assert DistillConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        DistillConfig.from_dict({"ipcc": 3})


def test_auto_depth_follows_input_size():
    assert [auto_depth(s) for s in (8, 28, 32, 64)] == [2, 3, 3, 4]


def test_a_method_owns_its_hyper_parameters():
    mtt = DistillConfig.make(dict(method="mtt", syn_steps=3, ipc=4))
    assert type(mtt.params).__name__ == "MTTParams" and mtt.params.syn_steps == 3
    assert DistillConfig(method="mtt", ipc=4, params={"syn_steps": 3}) == mtt
    assert DistillConfig.from_dict(mtt.flat()) == mtt  # flat records (engine 0.x) still load
    assert not hasattr(DistillConfig(), "syn_steps")  # DM has no MTT settings at all
    idc = DistillConfig.make(dict(method="idc", outer_loop=3))
    assert idc.replace(method="dc").params.outer_loop == 3  # a shared name carries over
    assert idc.replace(method="dm").params == DistillConfig().params  # the rest: the new method's defaults
    with pytest.raises(ConfigError, match="do not belong to method 'dm'"):
        DistillConfig(method="dm", params=mtt.params)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['dm_pool'\]"):
        DistillConfig(method="mtt", params={"dm_pool": 3})


def test_absurd_learning_rates_warn_and_the_paper_presets_do_not():
    from pdd_engine.config import PRESETS
    from pdd_engine.estimate import learning_rate_warnings
    cfg = DistillConfig.make(dict(method="mtt", lr_img=1e9, eval_lr=1e-9, lr_lr=5.0))
    text = " | ".join(learning_rate_warnings(cfg))
    for name in ("lr_img 1e+09", "eval_lr 1e-09", "lr_lr 5"):
        assert name in text and "Fix: set" in text
    assert "expert_lr" not in text
    for name, values in PRESETS.items():
        assert learning_rate_warnings(DistillConfig.make(values)) == [], name


def test_auto_augmentation_keeps_flip_only_where_a_mirror_keeps_the_class():
    """``dsa_strategy`` auto is the field's strategy on photos and the same without flip on digits (the
    datasets whose spec says a mirror changes the class); the keys see the resolved strategy, so auto and
    the strategy typed out are one run, and the field's strategy on digits is another."""
    from types import SimpleNamespace

    from pdd_engine.strategy import FIELD_STRATEGY, auto_strategy
    from pdd_engine.keys import Keys
    assert auto_strategy(True) == FIELD_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert auto_strategy(False) == "color_crop_cutout_scale_rotate"
    for name, flips in (("digits", False), ("mnist", False), ("svhn", False), ("cifar10", True)):
        cfg = DistillConfig.make({"dataset": name})
        assert cfg.dsa_strategy == "auto" and ("flip" in cfg.dsa_ops) is flips, name
    ds = SimpleNamespace(fingerprint="f", size=8)
    auto = Keys.of(DistillConfig.make({"stages": 1}), ds)
    assert auto == Keys.of(DistillConfig.make({"stages": 1, "dsa_strategy": auto_strategy(False)}), ds)
    assert auto.stage(1) != Keys.of(DistillConfig.make({"stages": 1, "dsa_strategy": FIELD_STRATEGY}), ds).stage(1)
    with pytest.raises(ConfigError, match="or 'auto' for the dataset's default"):
        DistillConfig.make({"dsa_strategy": "Auto"})
