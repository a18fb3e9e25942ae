"""pyproject.toml declares what the code imports, so that a missing dependency fails `env/setup.sh`
(which installs the declared dependencies and runs `pip check`) rather than a notebook.

Imports are read from the source (AST), with the module names passed as strings to `find_spec`,
`import_module`, `importorskip` and `_package_dir` (packages that ship weights are found without
being imported), and mapped to distributions with importlib.metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BY_NAME = ("find_spec", "import_module", "importorskip", "_package_dir")
# Extras that sda_lib may import when present (the rest serve the tests and the lab).
RUNTIME_EXTRAS = ("deepspeed",)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras=None) -> set[str]:
    """Distributions pyproject.toml declares: the dependencies and the given extras (all if None)."""
    optional = PROJECT.get("optional-dependencies", {})
    requirements = PROJECT["dependencies"] + [
        r for e in (optional if extras is None else extras) for r in optional.get(e, [])
    ]
    return {normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r)[0]) for r in requirements}


def imported_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports in `source`, and of modules named by string."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in BY_NAME and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return {name.split(".")[0] for name in found}


def notebook_source(path: Path) -> str:
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = ("".join(c["source"]) for c in cells)
    return "\n".join(line for text in lines for line in text.splitlines() if not line.lstrip().startswith(("%", "!")))


def third_party(sources: dict[str, str], local: set[str]) -> dict[str, set[str]]:
    """Distribution -> files importing it. A module that is not installed is taken to be its own
    distribution (true of deepspeed, the optional one)."""
    owners = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for where, source in sources.items():
        for module in imported_modules(source) - local - set(sys.stdlib_module_names) - {"__future__"}:
            for dist in owners.get(module, [module]):
                needed.setdefault(normalize(dist), set()).add(where)
    return needed


def missing(needed: dict[str, set[str]], have: set[str]) -> str:
    return "; ".join(
        f"{dist} (imported by {', '.join(sorted(files)[:3])})"
        for dist, files in sorted(needed.items())
        if dist not in have
    )


def test_pyproject_declares_what_sda_lib_and_the_notebooks_import():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "sda_lib").rglob("*.py")}
    sources |= {str(p.relative_to(ROOT)): notebook_source(p) for p in (ROOT / "notebooks").glob("*.ipynb")}
    gaps = missing(third_party(sources, local={"sda_lib", "benchmarks"}), declared(RUNTIME_EXTRAS))
    assert not gaps, f"add to pyproject.toml's dependencies (and pin in env/requirements.txt): {gaps}"


def test_pyproject_declares_what_the_tests_and_benchmarks_import():
    tests = {p.stem: p for p in (ROOT / "tests").glob("*.py")}
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in [*tests.values(), *(ROOT / "benchmarks").glob("*.py")]}
    gaps = missing(third_party(sources, local={"sda_lib", "benchmarks", *tests}), declared())
    assert not gaps, f"add to pyproject.toml's [test] extra (and pin in env/requirements.txt): {gaps}"


def test_every_declared_dependency_is_pinned():
    """setup.sh installs with env/requirements*.txt as constraints: a declared dependency without a
    pin there would take whatever version is newest on the day."""
    pins = {
        normalize(m[1]): m[2]
        for path in ("env/requirements-torch.txt", "env/requirements.txt")
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", (ROOT / path).read_text(), re.M)
    }
    unpinned = sorted(declared() - pins.keys())
    assert not unpinned, f"pin these in env/requirements.txt (name==version): {', '.join(unpinned)}"


def test_licence_file_matches_the_declared_licence():
    assert PROJECT.get("license") == "MIT" and PROJECT.get("license-files") == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def module_imports(package: Path) -> dict[str, set[str]]:
    """{module: the sda_lib modules it imports}, at module level and inside functions alike (a
    deferred import still ties the two modules together)."""
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = name if parts[-1] == "__init__" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
                # `from . import x` imports the submodule x; the package itself is a parent, loaded first anyway
                found |= {*([target] if node.module else []), *(f"{target}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.ImportFrom):
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = found
    # A module's own ancestor packages are initialised before it, whatever it imports from them.
    return {m: {t for t in targets if t in graph and not f"{m}.".startswith(f"{t}.")} for m, targets in graph.items()}


def test_package_imports_form_no_cycle():
    graph = module_imports(ROOT / "sda_lib")
    assert graph["sda_lib.method.adapters"] >= {"sda_lib.method.moda", "sda_lib.utils.registry"}  # read at all
    done = set()

    def visit(module, stack):
        for target in sorted(graph[module]):
            assert target not in stack, "import cycle: " + " -> ".join([*stack[stack.index(target) :], target])
            if target not in done:
                visit(target, [*stack, target])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])


# The layers, lowest first: each imports only from its own layer and those below it, so the method
# can be reused without the workbench, and data, recommenders and analyses without the runner.
LAYERS = {
    "utils": 0,
    "method": 1,
    "data": 2,
    "formats": 2,
    "recsys": 2,
    "analysis": 2,
    "workbench": 3,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], max(LAYERS.values()) + 1) if len(parts) > 1 else max(LAYERS.values()) + 1


def test_imports_point_down_the_layers():
    graph = module_imports(ROOT / "sda_lib")
    assert {m.split(".")[1] for m in graph if m.count(".") >= 1} >= set(LAYERS)
    upward = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m))
    assert not upward, "imports against the layers utils <- method <- data/recsys/analysis <- workbench:\n" + "\n".join(
        upward
    )
    assert _layer("sda_lib.method.adapt") < _layer("sda_lib.workbench.run")


def test_every_package_folder_is_listed_for_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sda_lib").rglob("__init__.py")} | {
        "sda_lib.notebooks"
    }
    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {"sda_lib.notebooks": "notebooks"}


def test_a_stuck_test_ends_the_suite_with_its_stack(tmp_path):
    """The suite's per-test timeout (pyproject.toml) stops a test that would wait for ever."""
    import subprocess

    (tmp_path / "test_stuck.py").write_text(
        "import threading\n\ndef test_waits_for_ever():\n    threading.Event().wait()\n"
    )
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["timeout"] <= 30 * 60 and config["timeout_method"] == "thread"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=2", "-o", "timeout_method=thread"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Timeout" in run.stdout and "test_waits_for_ever" in run.stdout  # the stuck test's stack
