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
    (dict(keep_easy=1.5), "not a probability"),
    (dict(dsa_strategy="color_warp"), "unknown augmentation"),
    (dict(expert_lr=0), "expert_lr must be > 0"),
])
def test_bad_values_name_problem_and_fix(kw, words):
    with pytest.raises(ConfigError) as e:
        DistillConfig(**kw)
    assert words in str(e.value)
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)


def test_divisibility_message_suggests_a_valid_ipc():
    with pytest.raises(ConfigError, match=r"e\.g\. IPC 9 with P=3"):
        DistillConfig(stages=3, ipc=10)


def test_presets_are_valid_and_defaults_are_cpu_sized():
    for name in PRESETS:
        preset(name)
    quick = preset("cpu-quick")
    assert quick.dataset == "digits" and quick.width <= 64 and quick.iterations <= 500
    paper = preset("paper-cifar10-ipc10")
    assert (paper.stages, paper.ipc, paper.syn_steps, paper.lr_lr, paper.zca) == (5, 10, 50, 1e-7, True)
    with pytest.raises(ConfigError):
        preset("nope")


def test_from_dict_round_trip_and_unknown_field():
    c = DistillConfig(method="mtt", ipc=4, stages=2)
    assert DistillConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        DistillConfig.from_dict({"ipcc": 3})


def test_auto_depth_follows_input_size():
    assert [auto_depth(s) for s in (8, 28, 32, 64)] == [2, 3, 3, 4]
