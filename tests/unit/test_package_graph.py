"""Dependencies between freshrec's packages point one way, checked from the source (ast), so they stay so.

    common  <-  paramserver  <-  trainer  <-  serving  <-  cluster  <-  bench
            <-  versions     <-  (paramserver, trainer, serving, cluster)
    (common, versions, trainer, serving)  <-  search  <-  (cluster, bench)

Every import counts, at module level or inside a function, and so does ``importlib.import_module``
with a literal name or an f-string that starts with one (``f"bench.{name}"`` imports bench). ``freshrec
bench`` is plugged into the CLI by an entry point (pyproject.toml), so cluster never imports bench.
"""

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "versions", "paramserver", "trainer", "serving", "search", "cluster", "bench")
# what each package may import of the others
ALLOWED = {
    "common": set(),
    "versions": {"common"},
    "paramserver": {"common", "versions"},
    "trainer": {"common", "versions", "paramserver"},
    "serving": {"common", "versions", "paramserver", "trainer"},
    "search": {"common", "versions", "trainer", "serving"},
    "cluster": {"common", "versions", "paramserver", "trainer", "serving", "search"},
    "bench": {"common", "versions", "paramserver", "trainer", "serving", "search", "cluster"},
}


def imports_of(package: str, repo: Path = REPO) -> dict[str, set[str]]:
    """{other package: {file that imports it}} for every .py file of ``package``."""
    out: dict[str, set[str]] = {}
    root = repo / package
    for path in root.rglob("*.py") if root.exists() else []:
        for node in _nodes(path):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (name := _dynamic_import(node)) is not None:
                names = [name]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    out.setdefault(top, set()).add(str(path.relative_to(repo)))
    return out


@functools.cache
def _nodes(path: Path) -> tuple[ast.AST, ...]:
    """Every node of a file's syntax tree, parsed once per session (the tests walk the whole tree several times)."""
    return tuple(ast.walk(ast.parse(path.read_text(), filename=str(path))))


def _dynamic_import(node: ast.AST) -> str | None:
    """The module name (or its literal prefix) of ``importlib.import_module(...)`` / ``import_module(...)`` /
    ``__import__(...)`` / ``importlib.util.find_spec(...)`` called with a literal or an f-string."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    f = node.func
    called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if called not in ("import_module", "__import__", "find_spec"):
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def test_every_package_imports_only_what_it_may():
    problems = []
    for package in PACKAGES:
        for other, files in sorted(imports_of(package).items()):
            if other not in ALLOWED[package]:
                problems.append(f"{package} imports {other} in {sorted(files)}")
    assert not problems, "\n".join(problems)


def test_no_cycle_between_packages():
    graph = {p: set(imports_of(p)) for p in PACKAGES}
    state: dict[str, int] = {}

    def visit(p: str, path: list[str]) -> None:
        state[p] = 1
        for q in graph[p]:
            if state.get(q) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [p, q])}")
            if q not in state:
                visit(q, path + [p])
        state[p] = 2

    for p in PACKAGES:
        if p not in state:
            visit(p, [])


def test_the_checker_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "common"
    pkg.mkdir()
    (pkg / "x.py").write_text("import numpy\n\ndef f():\n    from trainer.core import TrainerCore\n")
    assert imports_of("common", tmp_path) == {"trainer": {"common/x.py"}}


def test_the_checker_sees_importlib_with_literal_and_prefix_names(tmp_path):
    pkg = tmp_path / "cluster"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "import importlib\n\ndef f(b):\n    importlib.import_module(f'bench.{b}')\n"
        "    importlib.util.find_spec('search.index')\n    importlib.import_module(b)\n"
    )
    assert imports_of("cluster", tmp_path) == {"bench": {"cluster/x.py"}, "search": {"cluster/x.py"}}


def test_no_product_package_or_bench_imports_the_tests():
    """Test-only helpers live in tests/support; the product and the benches never import ``tests`` (what a
    bench shares with the tests, like bench.servedata, stays in bench and the tests import it from there)."""
    found = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in _nodes(path):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module]
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    else [n]
                    if (n := _dynamic_import(node)) is not None
                    else []
                )
                found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert not found, found
