"""Dependencies between freshrec's packages point one way, checked from the source (ast), so they stay so.

    common  <-  paramserver  <-  trainer  <-  serving  <-  cluster  <-  bench
            <-  versions     <-  (paramserver, trainer, serving, cluster)
    (common, versions, trainer, serving)  <-  search  <-  (cluster, bench)

Every import counts, at module level or inside a function.
"""

import ast
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
    "cluster": {"common", "versions", "paramserver", "trainer", "serving", "search", "bench"},
    "bench": {"common", "versions", "paramserver", "trainer", "serving", "search", "cluster"},
}


def imports_of(package: str, repo: Path = REPO) -> dict[str, set[str]]:
    """{other package: {file that imports it}} for every .py file of ``package``."""
    out: dict[str, set[str]] = {}
    root = repo / package
    for path in root.rglob("*.py") if root.exists() else []:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    out.setdefault(top, set()).add(str(path.relative_to(repo)))
    return out


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
