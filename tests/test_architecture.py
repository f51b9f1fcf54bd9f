"""The shape of the code: imports go one way, every mechanism's math lives in ops/, every
mixer is registered, and the recipe in docs/contributing.md enrolls a new mechanism."""
import ast
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import attnarena as aa
from attnarena import registry
from attnarena.mixers import Mixer

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "attnarena"

# Lower layers never import higher ones: cli -> arena -> compress and linearize -> tasks ->
# models (and pretrained) -> mixers -> ops -> shared utilities. The package itself (its
# __init__) is the public facade, at the top.
LAYERS = [
    ("shared", ("attnarena._validate", "attnarena.seeds", "attnarena.registry",
                "attnarena.options", "attnarena.stack", "attnarena.suites",
                "attnarena.progress", "attnarena.extras", "attnarena.subject")),
    ("ops", ("attnarena.ops",)),
    ("mixers", ("attnarena.mixers",)),
    ("models", ("attnarena.models", "attnarena.pretrained")),
    ("tasks", ("attnarena.tasks",)),
    ("compress", ("attnarena.compress", "attnarena.linearize")),
    ("arena", ("attnarena.arena",)),
    ("top", ("attnarena.cli", "attnarena.__main__", "attnarena")),
]


def _modules():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name, path, modules):
    """Modules of the package that ``name`` imports anywhere (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {m for m in found if m in modules and m != name}


def _layer(module):
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0]


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_imports_go_one_way():
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components; a component of two or more is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_check_sees_an_upward_import():
    # the check is only as good as its parser: an ops module importing a mixer is caught
    modules = _modules()
    planted = PACKAGE / "ops" / "softmax.py"
    tree_imports = _imports("attnarena.ops.softmax", planted, modules)
    assert all(_layer(d) <= _layer("attnarena.ops.softmax") for d in tree_imports)
    assert _layer("attnarena.mixers.base") > _layer("attnarena.ops.softmax")
    assert _layer("attnarena.cli") > _layer("attnarena.arena.run.train") > _layer("attnarena.tasks")


def _mixer_classes():
    classes = set()
    for name in _modules():
        if name.startswith("attnarena.mixers."):
            module = sys.modules.get(name) or __import__(name, fromlist=["_"])
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Mixer) and cls is not Mixer and \
                        cls.__module__.startswith("attnarena.mixers"):
                    classes.add(cls)
    return classes


def test_every_mixer_class_is_registered_or_a_base():
    registered = {registry._mixer_class(n) for n in aa.list_mixers()}
    bases = {base for cls in registered for base in cls.__mro__[1:]}
    stray = [f"{c.__module__}.{c.__name__}" for c in _mixer_classes()
             if c not in registered and c not in bases]
    assert not stray, (f"{stray}: neither registered nor the base of a registered mixer; "
                       "decorate with @register_mixer (docs/contributing.md, step 2)")


def test_every_mixer_module_takes_its_math_from_ops():
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        registers = any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_mixer"
                        for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                        for d in node.decorator_list)
        if not name.startswith("attnarena.mixers.") or not registers:
            continue
        deps = _imports(name, path, modules)
        assert any(d == "attnarena.ops" or d.startswith("attnarena.ops.") for d in deps), (
            f"{path.name} registers a mechanism but uses nothing from attnarena.ops: its "
            "math belongs in ops/ (docs/contributing.md, step 1)")


# Operations that mix tokens. In mixers/ they are allowed only where they do something other
# than the mechanism's own token mixing, each place named with why.
TOKEN_MATH = {"softmax", "log_softmax", "cumsum", "cumprod", "logcumsumexp", "einsum",
              "matmul", "bmm", "baddbmm", "scaled_dot_product_attention"}
NOT_MIXING = {
    ("linear.py", "_forward"): "counts of real tokens, for the output's length normalization",
    ("prefix_pool.py", "_sequence"): "each key scored by Aaren's learned query: a projection",
    ("prefix_pool.py", "_parts"): "Latte's p(l | t), a softmax over one token's latents",
    ("rglru.py", "forward"): "a block-diagonal linear map (RG-LRU's gates): a projection",
    ("rglru.py", "_sequence"): "each row's first real token (the recurrence's reset there)",
    ("routing.py", "_update_centroids"): "centroid running averages, updated in training",
    ("vq.py", "_update_codebook"): "codebook running averages, updated in training",
}


def test_a_mixers_math_is_in_its_op():
    """mixers/ holds projections, gates and reshapes; products, softmaxes and scans over
    tokens are the ops' (every registered mechanism's forward then calls one)."""
    found = set()
    for path in sorted((PACKAGE / "mixers").glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                name = "@" if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult) \
                    else (node.func.attr if isinstance(node, ast.Call)
                          and isinstance(node.func, ast.Attribute)
                          else getattr(getattr(node, "func", None), "id", None))
                if name == "@" or name in TOKEN_MATH:
                    place = (path.name, function.name)
                    found.add(place)
                    assert place in NOT_MIXING, (
                        f"{path.name}:{node.lineno} ({function.name}) computes {name} in a "
                        "mixer: the mechanism's math belongs in ops/ (docs/contributing.md, "
                        "step 1)")
    assert found == set(NOT_MIXING), f"stale exceptions: {set(NOT_MIXING) - found}"


def test_every_registered_forward_calls_an_op():
    """Each registered mechanism's class, or one of its bases in mixers/, calls into
    attnarena.ops (not just its module: a helper class beside it does not count)."""
    for name in aa.list_mixers():
        cls = registry._mixer_class(name)
        text = "\n".join(inspect.getsource(klass) for klass in cls.__mro__
                         if klass.__module__.startswith("attnarena.mixers"))
        assert re.search(r"\bops\.[a-z_0-9]+\(", text), (
            f"{name}: neither {cls.__name__} nor its bases call attnarena.ops: its math "
            "belongs in ops/ (docs/contributing.md, step 1)")


def test_every_mechanism_has_a_defining_property_test():
    own = {"test_mixer_contract.py", "test_architecture.py", "conftest.py",
           "test_registry.py", "test_cli.py", "test_docs.py"}
    text = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name not in own)
    missing = [n for n in aa.list_mixers() if f'"{n}"' not in text]
    assert not missing, (f"no defining-property test names {missing}: add one against an "
                         "independent computation from the paper (docs/contributing.md, step 3)")


FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "newcomer"


def test_a_new_mechanism_needs_one_ops_file_and_one_mixers_file(tmp_path):
    """The docs/contributing.md recipe, followed literally: cosFormer's op dropped into ops/ and
    its mixer into mixers/ of a copy of the package, nothing else edited; the contract
    tests then enroll it and pass."""
    copy = tmp_path / "src" / "attnarena"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(FIXTURES / "ops_cosformer.py", copy / "ops" / "cosformer.py")
    shutil.copy(FIXTURES / "mixers_cosformer.py", copy / "mixers" / "cosformer.py")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x",
         str(ROOT / "tests" / "test_mixer_contract.py"), "-k", "cosformer"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) passed", result.stdout)
    assert counts and int(counts.group(1)) >= 20, result.stdout[-2000:]  # all checks ran


def test_the_copy_really_uses_the_copied_package(tmp_path):
    # guards the test above: the subprocess imports the copy, not the installed package
    copy = tmp_path / "src" / "attnarena"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run([sys.executable, "-c", "import attnarena; print(attnarena.__file__)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.stdout.strip() == str(copy / "__init__.py")


@pytest.mark.parametrize("skip", ["register", "docstring", "form"])
def test_a_skipped_step_names_itself(skip):
    import torch

    from attnarena.mixers.linear import LinearAttentionBase

    def define(**overrides):
        def features(self, x, positions, is_query):
            return torch.relu(x) + 1e-6

        namespace = {"map_features": features, "__doc__": "X (Author 2026)."}
        if skip == "docstring":
            namespace["__doc__"] = None
        if skip == "form":
            namespace["__init__"] = lambda self, dim, heads=1, causal=False: \
                LinearAttentionBase.__init__(self, dim, heads, causal)
        return type("Fixture", (LinearAttentionBase,), namespace)

    cls = define()
    try:
        if skip == "register":
            with pytest.raises(TypeError, match="not registered.*register_mixer"):
                cls(16, 2)
        else:
            with pytest.raises(TypeError, match="docstring" if skip == "docstring" else "form="):
                registry.register_mixer("fixture_step", family="x", paper="X 2026",
                                        complexity="O(L)", patterns=("self",),
                                        forms=("parallel", "chunk"))(cls)
    finally:
        registry._MIXERS.pop("fixture_step", None)


def test_every_approximation_of_softmax_can_be_measured_against_it():
    # speed sweeps measure these mechanisms' error through softmax_counterpart
    missing = [n for n in aa.list_mixers() if aa.mixer_info(n).approximates_softmax
               and not hasattr(registry._mixer_class(n), "softmax_counterpart")]
    assert not missing, f"{missing} approximate softmax but have no softmax_counterpart"
