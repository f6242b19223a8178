"""The package's modules import each other without cycles (issue 17: "no import cycle between
modules"). Every ``import``/``from ... import`` statement of every module counts, including
those inside functions: a lazy import only hides a cycle until someone moves it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scatterdist"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module under ``root``."""
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Edges module -> modules of the package it imports (a ``from pkg import name`` edge goes to
    the submodule ``pkg.name`` when there is one, else to ``pkg``)."""
    mods = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name
                    while target and target not in mods:
                        target = target.rpartition(".")[0]
                    if target:
                        edges[name].add(target)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    if sub in mods:
                        edges[name].add(sub)
                    elif module in mods:
                        edges[name].add(module)
        edges[name].discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle(tmp_path):
    # The checker itself can fail: a two-module circle through a lazy import is found.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_inputs_and_sims_do_not_import_each_other_in_a_circle():
    edges = import_graph()
    assert "scatterdist.inputs.masks" in edges["scatterdist.sims.spec"]
    reach, todo = set(), ["scatterdist.inputs.masks"]
    while todo:
        m = todo.pop()
        for n in edges[m] - reach:
            reach.add(n)
            todo.append(n)
    assert not any(m.startswith("scatterdist.sims") for m in reach), sorted(reach)


#: Third-party modules the package may import without declaring them as runtime dependencies:
#: each belongs to an optional extra (and is imported only by the feature that needs it), or
#: is only probed for (IPython: the progress bar asks whether it runs in a notebook).
OPTIONAL_MODULES = {
    "cryptography": "tls", "dask_cuda": "cuda", "dask_jobqueue": "jobqueue", "healsparse": "healsparse",
    "matplotlib": "plot", "triton": "triton", "camb": "camb", "xdggs": "xdggs", "IPython": None,
}


def _third_party_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{top-level module: {files importing it}}`` for every non-stdlib, non-package import."""
    import sys

    found: dict[str, set[str]] = {}
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("scatterdist", "__future__"):
                    found.setdefault(top, set()).add(str(f.relative_to(root.parent)))
    return found


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """Normalised names of the runtime dependencies (with the extras they pull in, such as
    dask[distributed]) and of each optional extra, from pyproject.toml."""
    import re
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        out = set()
        for r in reqs:
            m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", r)
            out.add(m.group(1).lower().replace("_", "-"))
            out.update(e.strip().lower() for e in (m.group(2) or "").split(",") if e.strip())
        return out

    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


def test_every_runtime_import_is_a_declared_dependency():
    """Issue 17 row 13: `pip install scatterdist` (no extras) then a masked map failed with
    ModuleNotFoundError: scipy. Every third-party module the package imports is a runtime
    dependency, or belongs to the optional extra named in OPTIONAL_MODULES."""
    from importlib.metadata import packages_distributions

    runtime, extras = _declared()
    dists = packages_distributions()
    missing = {}
    for module, files in sorted(_third_party_imports().items()):
        provided = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if provided & runtime:
            continue
        if module in OPTIONAL_MODULES:
            extra = OPTIONAL_MODULES[module]
            assert extra is None or provided & extras[extra], (module, extra, extras.get(extra))
            continue
        missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject's dependencies: {missing}"
    assert {"scipy", "astropy"} <= runtime


def test_ahead_of_time_compile_without_triton_is_one_actionable_error(monkeypatch):
    """triton is an optional extra: without it, the ahead-of-time compile (tests, make gpu-check,
    benchmarks/gpu_model.py) raises one TritonToolchainError naming the install command."""
    import sys

    import pytest

    from scatterdist.sphere import triton_aot

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    with pytest.raises(triton_aot.TritonToolchainError, match=r"pip install 'scatterdist\[triton\]'"):
        triton_aot.compile_kernel(lambda: None, {}, {}, 90)
    with pytest.raises(triton_aot.TritonToolchainError, match="triton is not installed"):
        triton_aot._tool("cuobjdump")
