"""The executor seam: Ray tasks give the local executor's results, survive a killed worker, and stop.

A real Ray cluster is started for this module (``ray start --head`` on 127.0.0.1) and stopped after.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pdd_engine import distill
from pdd_engine.cache import Store
from pdd_engine.errors import Cancelled
from pdd_engine.executor import LocalExecutor, RayExecutor, make_executor, map_chains, stepwise
from pdd_engine.keys import Keys
from pdd_engine.progressive import Engine
from tests.raytasks import die_once, sleepy  # importable by Ray's workers (the project root is on their path)

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}  # Ray's default from 2.59
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, env=env)
    address = f"127.0.0.1:{port}"
    try:
        yield address
    finally:
        import ray
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)


@pytest.fixture
def ray_executor(cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the token itself is read from ~/.ray, as ray start wrote it
    ex = RayExecutor()
    yield ex
    ex.close()


@pytest.mark.ray
def test_ray_gives_the_local_executors_stages_and_accuracies(ray_executor, tiny, tmp_path, digits, monkeypatch):
    """Every kind of unit on Ray (MTT's experts, the easy-example scorers, one evaluation network per
    unit) gives the local executor's stages, experts and accuracies; the dataset goes to the object
    store once for the whole run, not once per stage. Both at the same threads: a Ray run has no side
    lane, so the local run has none either (a lane halves the stage loop's threads, and float sums
    depend on the thread count)."""
    monkeypatch.setenv("PDD_SIDE_LANE", "0")
    cfg = tiny(method="mtt", num_experts=3, filter_easy=True, keep_easy=0.5, eval_batched=False)
    local = distill(cfg.replace(executor="local"), Store(tmp_path / "local"))
    events = list(Engine(cfg.replace(executor="ray"), Store(tmp_path / "ray"), executor=ray_executor).run())
    assert events[-1].accuracies == local.accuracies
    keys = Keys.of(cfg, digits)
    for i in (1, 2):
        a, _ = Store(tmp_path / "local").get(keys.stage(i))
        b, _ = Store(tmp_path / "ray").get(keys.stage(i))
        assert torch.equal(a["stored"], b["stored"]) and torch.equal(a["real_keep"], b["real_keep"]), i
    assert not a["real_keep"].all()  # the scorers dropped examples after stage 1
    experts = [Store(tmp_path / d).get(keys.memo("experts", 2))[0]["trajectories"] for d in ("local", "ray")]
    assert torch.equal(*experts)
    # the training set (experts of stages 1 and 2, the scorers) and the test split (every evaluation unit)
    assert ray_executor.puts["x"] == 1 and "real_x" not in ray_executor.puts and ray_executor.puts["ds"] == 1


@pytest.mark.ray
def test_a_killed_ray_worker_is_retried_and_the_map_finishes(ray_executor, tmp_path):
    assert ray_executor.map(die_once, [1, 2], {"dir": str(tmp_path)}) == [10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died-1", "died-2"]


@pytest.mark.ray
def test_stop_cancels_outstanding_ray_tasks(ray_executor, tmp_path):
    t0 = time.time()

    def cancel():
        if any(tmp_path.glob("started-*")) and time.time() - t0 > 1:
            raise Cancelled()
    with pytest.raises(Cancelled):
        ray_executor.map(sleepy, [1, 2], {"dir": str(tmp_path)}, cancel=cancel)
    assert time.time() - t0 < 30
    time.sleep(2)
    assert not list(tmp_path.glob("finished-*"))


def test_local_is_the_default_and_an_unknown_executor_is_named(monkeypatch):
    monkeypatch.delenv("PDD_EXECUTOR", raising=False)
    assert isinstance(make_executor(None), LocalExecutor)
    from pdd_engine.errors import PDDError
    with pytest.raises(PDDError, match="unknown executor 'spark'"):
        make_executor("spark")


@pytest.mark.ray
def test_the_studios_executor_setting_runs_the_units_on_ray(cluster, tmp_path):
    """Where units run is the server's setting (PDD_EXECUTOR), not a visitor's: a server started with "ray"
    runs an API client's run on the cluster (RAY_ADDRESS of the server) and says so when done."""
    from gradio_client import Client

    from tests.apphelpers import running_app
    from tests.test_app import TINY, follow

    with running_app(tmp_path, RAY_ADDRESS=cluster, RAY_AUTH_MODE="token", PDD_EXECUTOR="ray") as url:
        c = Client(url, verbose=False)
        job_id, token, msg = c.predict("", TINY, api_name="/start")
        assert job_id and msg == ""
        _, final = follow(c, job_id, token)
    assert final[0].startswith("**Done**") and "units on the ray executor" in final[0], final[0]


def _square(shared: dict, item: int) -> int:
    """A unit that waits at ``shared``'s barrier (if any) so that a test sees units run at the same time."""
    if shared.get("barrier") is not None:
        shared["barrier"].wait()
    if item == shared.get("fail"):
        raise ValueError(f"unit {item} failed")
    shared.setdefault("threads", set()).add(torch.get_num_threads())
    return item * item


def test_local_workers_run_units_together_with_the_sequential_results():
    """Two workers run two units at once (each waits for the other at a barrier: one after another, the
    first would wait forever), give the sequential results in order, count every unit done, and run each at
    the caller's torch thread count."""
    import threading
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen, shared = [], {"barrier": threading.Barrier(2, timeout=10)}
        assert LocalExecutor(2).map(_square, [1, 2, 3, 4], shared, done=seen.append) == [1, 4, 9, 16]
        assert sorted(seen) == [1, 2, 3, 4] and shared["threads"] == {1}
        assert LocalExecutor().map(_square, [1, 2, 3, 4], {}) == [1, 4, 9, 16]
    finally:
        torch.set_num_threads(before)


def _cancel_after(n: int):
    """A cancel check that passes ``n`` times (each recorded in the list returned with it), then raises
    Cancelled: a Stop after ``n`` units started."""
    started: list[int] = []

    def cancel():
        if len(started) >= n:
            raise Cancelled()
        started.append(1)
    return cancel, started


def _chained(shared: dict, item: tuple) -> tuple:
    """Chain k's unit at one step: (k, step, value). Chain 2's first unit waits until chain 0's second
    has run, which only an executor that starts a chain's next unit before the step's last ends allows."""
    k, step, value = item
    if shared.get("gate") is not None:
        if (k, step) == (2, 0) and not shared["gate"].wait(timeout=10):
            raise TimeoutError("chain 0's second unit never started while chain 2's first ran")
        if (k, step) == (0, 1):
            shared["gate"].set()
    if (k, step) == shared.get("fail"):
        raise ValueError(f"chain {k} failed at step {step}")
    return k, step, value * 10 + k


def _next(item: tuple, result: tuple) -> tuple:
    return result[0], result[1] + 1, result[2]


def test_chains_on_workers_start_a_chains_next_unit_early_and_give_the_stepwise_results():
    """map_chains: each chain's units in order, each from its last's result, equal to one map per step; on
    two workers, chain 0's second unit runs while chain 2's first does (three chains, two workers: three
    rounds, not four); a step goes to on_step once every chain has done it, so a failure or a Stop later
    (raised in the caller) loses none."""
    import threading
    items = [(k, 0, k + 1) for k in range(3)]
    want = stepwise(LocalExecutor(), _chained, items, {}, 3, _next)
    assert want[1] == [(1, 0, 21), (1, 1, 211), (1, 2, 2111)]
    assert map_chains(LocalExecutor(2), _chained, items, {"gate": threading.Event()}, 3, _next) == want
    assert map_chains(LocalExecutor(), _chained, items, {}, 3, _next) == want
    for workers in (1, 2):  # each step reported once every chain has finished it; a later failure keeps it
        reported = []
        with pytest.raises(ValueError, match="chain 1 failed at step 1"):
            map_chains(LocalExecutor(workers), _chained, items, {"fail": (1, 1)}, 3, _next,
                       on_step=lambda step, results: reported.append((step, results)))
        assert reported == [(0, [chain[0] for chain in want])]
    assert map_chains(LocalExecutor(2), _chained, items, {}, 0, _next) == [[], [], []]
    cancel, started = _cancel_after(4)
    with pytest.raises(Cancelled):
        map_chains(LocalExecutor(2), _chained, items, {}, 3, _next, cancel=cancel)
    assert len(started) == 4


def test_local_workers_raise_a_units_failure_and_stop_starting_units():
    with pytest.raises(ValueError, match="unit 2 failed"):
        LocalExecutor(2).map(_square, [1, 2, 3], {"fail": 2})
    cancel, started = _cancel_after(2)
    with pytest.raises(Cancelled):
        LocalExecutor(2).map(_square, list(range(20)), {}, cancel=cancel)
    assert len(started) == 2
