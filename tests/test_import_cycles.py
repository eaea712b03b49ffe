"""No import cycles among famus's modules, at module level (imports inside functions are how a
cycle is broken on purpose). Read with ``ast``: nothing is imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "famus"
KNOWN: set[frozenset[str]] = set()  # none left


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported by the module body (``if``/``try`` blocks too, ``if TYPE_CHECKING`` not)."""
    names: list[str] = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.extend([f"{node.module}.{a.name}" for a in node.names] + [node.module])

    visit(tree.body)
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> famus modules it imports, with the packages that importing them runs first."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        own = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}  # already importing
        targets = {n for n in _top_level_imports(ast.parse(path.read_text())) if n in mods}
        for t in list(targets):
            targets |= {t.rsplit(".", i)[0] for i in range(1, t.count(".") + 1)}
        graph[name] = targets - own - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_the_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_new_import_cycles():
    cycles = [c for c in _cycles(_graph()) if frozenset(c) not in KNOWN]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def test_the_layers_import_downwards_only():
    """Training, the meta step, data and models never import the report (nor the demo, bench or compare that use
    them), not even inside a function: ``famus report`` reads what a run wrote."""
    above = ("famus.report", "famus.demo", "famus.bench", "famus.compare", "famus.cli")
    bad = []
    for name, path in _modules().items():
        if not name.startswith(("famus.train", "famus.meta", "famus.data", "famus.models")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            bad += [f"{name} imports {t}" for t in targets if t.startswith(above)]
    assert not bad, bad
