"""The import graph: no circles in the engine or the app, the app reaches the engine through its one door, and
the web process's imports never reach torch."""

import ast
import subprocess
import tempfile
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOOR = {"pdd_engine.service", "pdd_engine.events", "pdd_engine.errors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    files = [*ROOT.glob("pdd_engine/**/*.py"), *ROOT.glob("app/**/*.py"), ROOT / "app.py"]
    return {("app_main" if f == ROOT / "app.py" else module_name(f)): f for f in files}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, whether at module level) for every import in the file: project modules by their
    full name (a name imported from a package that is a module counts as that module), others by top name."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for n in ast.walk(block)}  # names for annotations alone: never imported when the code runs
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in known else base, id(node) in top_level))
    return out


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """(every project edge, module-level project edges, module-level outside imports by top-level name)."""
    files = sources()
    known = set(files)
    every, top, outside = {m: set() for m in files}, {m: set() for m in files}, {m: set() for m in files}
    for m, path in files.items():
        for target, at_top in imports(m, path, known):
            if target in known:
                if target != m and not m.startswith(target + ".") and target != "pdd_engine":
                    every[m].add(target)
                    if at_top:
                        top[m].add(target)
            elif at_top:
                outside[m].add(target.split(".")[0])
    return every, top, outside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_round_a_circle():
    every, _, _ = graph()
    assert cycles(every) == []


def test_the_app_reaches_the_engine_only_through_the_service_events_and_errors():
    every, _, _ = graph()
    stray = {(m, t) for m, ts in every.items() if m.startswith("app") for t in ts
             if t.startswith("pdd_engine") and t not in DOOR}
    assert stray == set()


def test_the_web_process_never_imports_torch():
    """Statically (module-level imports from the app and the door) and for real (importing them)."""
    _, top, outside = graph()
    reach, todo = set(), [m for m in top if m.startswith("app")] + sorted(DOOR)
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += top[m]
    heavy = {m for m in reach if outside[m] & {"torch", "torchvision", "safetensors"}}
    assert heavy == set() and "pdd_engine.worker" not in reach
    code = "import sys, app.layout, app.studio, app.housekeeping; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_graph_sees_what_it_checks():
    """The checks above can fail: the graph finds the door's own imports and the worker's torch."""
    every, _, outside = graph()
    assert {"pdd_engine.service", "pdd_engine.errors"} <= every["app.studio"] and "pdd_engine.events" in every["app.render"]
    assert "torch" in outside["pdd_engine.worker"] and "pdd_engine.registry" in every["pdd_engine.config"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_the_cli_sets_openmps_wait_before_torch_loads_and_keeps_the_users():
    """OpenMP reads its wait settings once, when torch loads it: the CLI's short spin (settings.SPIN_COUNT)
    is in the environment by then, and a user's own wait policy or spin count is left as it is."""
    import os

    from pdd_engine.settings import SPIN_COUNT, openmp_defaults

    assert openmp_defaults({}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert openmp_defaults({"OMP_WAIT_POLICY": "ACTIVE"}) == {} == openmp_defaults({"GOMP_SPINCOUNT": "5"})
    code = ("import sys, builtins, os\nseen = {}\nreal = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'torch' and 'torch' not in seen: seen['torch'] = os.environ.get('GOMP_SPINCOUNT')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = spy\nimport pdd_engine.__main__\nprint(seen.get('torch'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == str(SPIN_COUNT), out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "GOMP_SPINCOUNT": "7"})
    assert out.stdout.strip() == "7", out.stderr[-2000:]


def test_a_run_never_loads_the_compiler_or_scikit_learn():
    """torch.optim's first call imports torch._dynamo (1.3 s) and scikit-learn's import takes 1 s: the engine's
    own SGD and digits reader keep both out of a run, which is a tenth of the default run's time."""
    code = ("import sys\n"
            "from pdd_engine import DistillConfig, distill\n"
            "distill(DistillConfig(stages=2, ipc=2, iterations=3, eval_epochs=2, eval_models=2, cache_dir=sys.argv[1]))\n"
            "print(sorted(m for m in ('torch._dynamo', 'sklearn') if m in sys.modules))\n")
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", code, cache], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
