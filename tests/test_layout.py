"""The package's layout rules, read from the source with `ast` (nothing is imported but in the
last test):

* no import cycles inside `minigrad` (kernels/ counted as minigrad.kernels), imports inside
  functions included: a cycle works only as long as nobody reorders the imports;
* the engine uses minigrad.kernels through its public names only;
* nothing imports a top-level `kernels` (it installs as minigrad.kernels; a top-level
  `kernels` would be PyPI's package of that name, or nothing);
* `import minigrad` stays light: it loads neither minigrad.tools nor matplotlib.
"""
import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package name -> its folder in the repository
PACKAGE_DIRS = {"minigrad": ROOT / "minigrad", "minigrad.kernels": ROOT / "kernels"}
ENGINE_EXEMPT = "minigrad.kernels"


@dataclass(frozen=True)
class Source:
    name: str        # dotted module name; a package's __init__ is the package's name
    path: Path
    is_package: bool


def discover():
    """{module name: Source} for every .py file of minigrad/ and kernels/."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            found[name] = Source(name, path, is_package)
    return found


MODULES = discover()


def _in_type_checking(node, parents):
    """Whether node sits under `if TYPE_CHECKING:` (not run: no import at run time)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                return True
    return False


@dataclass(frozen=True)
class Import:
    module: str      # the module imported (absolute, resolved)
    names: tuple     # for `from module import a, b`: ("a", "b"); () for `import module`
    line: int


def imports_of(src):
    """Every import statement of a module (module level and inside functions), resolved to
    absolute module names; `if TYPE_CHECKING:` blocks are left out."""
    tree = ast.parse(src.path.read_text(), str(src.path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node,
                                                                                  parents):
            continue
        if isinstance(node, ast.Import):
            out += [Import(alias.name, (), node.lineno) for alias in node.names]
            continue
        if node.level:  # relative: from the module's package, up level - 1 packages
            package = src.name if src.is_package else src.name.rpartition(".")[0]
            base = package.split(".")
            if node.level - 1 >= len(base):
                raise AssertionError(f"{src.path}:{node.lineno}: relative import beyond the "
                                     "top-level package")
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module
        out.append(Import(module, tuple(alias.name for alias in node.names), node.lineno))
    return sorted(out, key=lambda imp: imp.line)


def _ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def edges_of(src):
    """{module of ours this one imports: first line that does}. Importing a.b.c runs the
    __init__ of a, a.b and a.b.c, so the packages on the way count too, except the importer's
    own enclosing packages (always loaded before it); `from p import x` counts p.x when x is
    a submodule."""
    out = {}
    skip = _ancestors(src.name) | {src.name}
    for imp in imports_of(src):
        targets = {imp.module} | _ancestors(imp.module)
        targets |= {f"{imp.module}.{n}" for n in imp.names}
        for t in targets:
            if t in MODULES and t not in skip:
                out.setdefault(t, imp.line)
    return out


def find_cycles(graph):
    """One cycle (a list of modules, first == last) per strongly connected group of more than
    one module, or a module that imports itself (Tarjan's algorithm)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(set(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(graph, group) for group in groups]


def _a_cycle(graph, group):
    """A path start -> ... -> start inside the group (breadth-first: a shortest one)."""
    start = min(group)
    paths = {w: [start, w] for w in graph[start] if w in group}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return paths[start]


def import_graph():
    edges = {name: edges_of(src) for name, src in MODULES.items()}
    return {name: set(e) for name, e in edges.items()}, edges


def test_discovery_sees_the_packages():
    assert {"minigrad", "minigrad.tensor", "minigrad.kernels", "minigrad.kernels.im2col",
            "minigrad.kernels.cuda", "minigrad.tools.explain"} <= set(MODULES)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["a", "b", "c", "a"], ["d", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from . import kernels\nfrom ..x import y\n"
                    "def f():\n    from .kernels import _numba\n")
    got = imports_of(Source("minigrad.sub.m", path, False))
    assert [(i.module, i.names) for i in got] == [
        ("minigrad.sub", ("kernels",)), ("minigrad.x", ("y",)),
        ("minigrad.sub.kernels", ("_numba",))]
    init = tmp_path / "__init__.py"
    init.write_text("from . import kernels\n")
    pkg = imports_of(Source("minigrad", init, True))[0]
    assert (pkg.module, pkg.names) == ("minigrad", ("kernels",))


def test_no_import_cycles():
    graph, edges = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        steps = [f"{a} (line {edges[a][b]} of {MODULES[a].path.relative_to(ROOT)}) -> {b}"
                 for a, b in zip(cycle[:-1], cycle[1:], strict=True)]
        lines.append("\n    ".join(steps))
    assert not cycles, "import cycles inside minigrad:\n  " + "\n  ".join(lines)


def _private(module_path, names):
    """The private parts of an import from minigrad.kernels: module path segments after
    minigrad.kernels and imported names that start with '_'."""
    inside = module_path[len(ENGINE_EXEMPT):].lstrip(".")
    bad = [seg for seg in inside.split(".") if seg.startswith("_")] if inside else []
    return bad + [n for n in names if n.startswith("_")]


def test_engine_uses_only_public_kernel_names():
    """minigrad/ (outside minigrad.kernels) reaches into kernels through public names only, so
    kernels/ can reorganise its private helpers (_numba, _blas, _common...) freely."""
    problems = []
    for name, src in MODULES.items():
        if name == ENGINE_EXEMPT or name.startswith(ENGINE_EXEMPT + "."):
            continue
        for imp in imports_of(src):
            if imp.module != ENGINE_EXEMPT and not imp.module.startswith(ENGINE_EXEMPT + "."):
                continue
            bad = _private(imp.module, imp.names)
            if bad:
                where = f"{src.path.relative_to(ROOT)}:{imp.line}"
                what = imp.module + (f" import {', '.join(imp.names)}" if imp.names else "")
                problems.append(f"{where}: {what} (private: {', '.join(bad)})")
    assert not problems, ("the engine imports private parts of minigrad.kernels:\n  "
                          + "\n  ".join(problems))


def test_nothing_imports_a_top_level_kernels():
    problems = [f"{src.path.relative_to(ROOT)}:{imp.line}: {imp.module}"
                for src in MODULES.values() for imp in imports_of(src)
                if imp.module == "kernels" or imp.module.startswith("kernels.")]
    assert not problems, ("import minigrad.kernels (or relative imports inside kernels/), "
                          "never a top-level kernels:\n  " + "\n  ".join(problems))


def test_import_minigrad_loads_neither_tools_nor_matplotlib():
    code = ("import sys, minigrad\n"
            "print(sorted(m for m in sys.modules if m == 'matplotlib' or "
            "m.startswith(('matplotlib.', 'minigrad.tools'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "[]", f"import minigrad loaded {out}"
