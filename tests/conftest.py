import pytest
import torch

from pdd_engine import DistillConfig
from pdd_engine.cache import Store

torch.set_num_threads(2)

TINY = dict(stages=2, ipc=2, iterations=10, eval_epochs=12, eval_models=2, dm_pool=2, transition_epochs=5, batch_real=32,
            num_experts=2, syn_steps=5, max_start_epoch=2, expert_epochs=1, outer_loop=2, inner_loop=2,
            filter_models=2, compare_base="off")


@pytest.fixture
def tiny():
    """A config factory for runs that take seconds on digits (each method takes its own settings from TINY)."""
    return lambda **kw: DistillConfig.make({**TINY, **kw}, other_methods="drop")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cache")
    yield s
    s.close()


@pytest.fixture(scope="session")
def digits():
    from pdd_engine.data import load_dataset
    return load_dataset("digits")
