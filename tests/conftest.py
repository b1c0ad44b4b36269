import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from pdd_engine import DistillConfig
from pdd_engine.cache import Store

torch.set_num_threads(2)

# generated cases (tests/test_untrusted.py): a bounded count in the test suite, many more in
# `python -m bench.robustness` (HYPOTHESIS_PROFILE=slow)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("slow", max_examples=int(os.environ.get("PDD_FUZZ_EXAMPLES", "1500")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
