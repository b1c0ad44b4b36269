"""The executor seam: Ray tasks give the local executor's results, survive a killed worker, and stop;
threads run units side by side with local's results.

A real Ray cluster is started for the Ray tests (``ray start --head`` on 127.0.0.1) and stopped after.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pdd_engine import distill
from pdd_engine.cache import Store
from pdd_engine.errors import Cancelled
from pdd_engine.executor import LocalExecutor, RayExecutor, ThreadsExecutor, make_executor
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


def test_ray_gives_the_local_executors_stages_and_accuracies(ray_executor, tiny, tmp_path, digits):
    """Every kind of unit on Ray (MTT's experts, the easy-example scorers, one evaluation network per
    unit) gives the local executor's stages, experts and accuracies; the dataset goes to the object
    store once for the whole run, not once per stage."""
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


def test_a_killed_ray_worker_is_retried_and_the_map_finishes(ray_executor, tmp_path):
    assert ray_executor.map(die_once, [1, 2], {"dir": str(tmp_path)}) == [10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died-1", "died-2"]


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


def test_the_studios_executor_setting_runs_the_units_on_ray(cluster, tmp_path):
    """The page's Executor field reaches the engine: a run started with "ray" by an API client runs its
    units on the cluster (RAY_ADDRESS of the server) and says so when done."""
    from gradio_client import Client

    from app.ui import control_values
    from tests.apphelpers import running_app
    from tests.test_app import TINY, follow

    with running_app(tmp_path, RAY_ADDRESS=cluster, RAY_AUTH_MODE="token") as url:
        c = Client(url, verbose=False)
        job_id, _, msg = c.predict("", *control_values(TINY.replace(executor="ray")), api_name="/start")
        assert job_id and msg == ""
        _, final = follow(c, job_id)
    assert final[0].startswith("**Done**") and "units on the ray executor" in final[0], final[0]


def meet(shared: dict, item: int) -> tuple[int, int]:
    """A unit that finishes only once ``shared["n"]`` units run at the same time (local would time out)."""
    shared["barrier"].wait(timeout=shared.get("timeout", 20))
    return item, torch.get_num_threads()


def test_threads_run_units_side_by_side_with_a_share_of_torchs_threads(monkeypatch):
    """Units run at once (a barrier only two concurrent units pass), results come back in order, each
    unit has its share of torch's threads, and the process's count is restored after, error or not."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        done = []
        out = ThreadsExecutor(workers=2).map(meet, [3, 1, 2, 0], {"barrier": threading.Barrier(2)}, done=done.append)
        assert out == [(3, 2), (1, 2), (2, 2), (0, 2)] and done == [1, 2, 3, 4]
        assert torch.get_num_threads() == 4
        with pytest.raises(threading.BrokenBarrierError):  # two units, three at the barrier: a unit's error surfaces
            ThreadsExecutor(workers=2).map(meet, [0, 1], {"barrier": threading.Barrier(3), "timeout": 1})
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_stop_keeps_queued_thread_units_from_starting():
    started = []

    def cancel():
        if len(started) >= 2:
            raise Cancelled()
    with pytest.raises(Cancelled):
        ThreadsExecutor(workers=2).map(lambda shared, item: started.append(item) or time.sleep(0.2), list(range(8)), {},
                                       cancel=cancel)
    assert len(started) < 8


def test_threads_give_the_local_executors_results_at_one_torch_thread_per_unit(tiny, tmp_path):
    """MTT's experts and the evaluation networks as units side by side give exactly local's results when
    each unit has local's one torch thread; the executor is in no key. Networks are seeded under a lock
    (models.SEEDING): without it, units interleaved their draws from torch's one global generator and
    trained other experts and networks."""
    cfg = tiny(method="mtt", stages=2, eval_models=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        local = distill(cfg, Store(tmp_path / "local"))
        torch.set_num_threads(2)  # two units at once, one thread each
        threaded = distill(cfg.replace(executor="threads"), Store(tmp_path / "threads"))
    finally:
        torch.set_num_threads(before)
    assert threaded.executor == "threads" and local.executor == "local"
    assert Keys(cfg, "f", 8).run == Keys(cfg.replace(executor="threads"), "f", 8).run
    assert threaded.accuracies == local.accuracies


def test_networks_built_side_by_side_in_threads_get_their_own_seeds_weights():
    """models.seeded_model holds a lock while it seeds torch's global generator and draws the weights: two
    threads building networks at once (units on the threads executor) each get exactly their seed's."""
    from pdd_engine.models import seeded_model
    want = {s: list(seeded_model(s, 3, 10, 32, 3, 64).state_dict().values()) for s in (1, 2)}
    wrong = []

    def build(seed):
        for _ in range(30):
            got = seeded_model(seed, 3, 10, 32, 3, 64).state_dict().values()
            if not all(torch.equal(a, b) for a, b in zip(got, want[seed])):
                wrong.append(seed)
    workers = [threading.Thread(target=build, args=(s,)) for s in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not wrong
