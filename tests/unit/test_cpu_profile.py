"""The suite's own CPU measurement (tests/support/cpu_profile.py): per-module medians, the order file, the summary."""

import json

from tests.support.cpu_profile import CpuProfile, module_costs, summarise


def _run(tmp_path, name, workers):
    d = tmp_path / name
    d.mkdir()
    for worker, modules in workers.items():
        data = {
            "worker": worker,
            "startup_s": 0.5,
            "collect_s": 10.0,
            "total_s": 10.5 + sum(own + kids for own, kids in modules.values()),
            "total_self_s": 1.0,
            "modules": {m: {"self_s": own, "children_s": kids} for m, (own, kids) in modules.items()},
            "tests": {f"{m}::test_x": [own, kids, own + kids] for m, (own, kids) in modules.items()},
        }
        (d / f"{worker}.json").write_text(json.dumps(data))
    return d


def test_module_costs_are_medians_over_runs_with_children_the_most_first(tmp_path):
    runs = [
        _run(
            tmp_path,
            "a",
            {"main": {}, "gw0": {"t/a.py": (1.0, 0.0), "t/b.py": (5.0, 2.0)}, "gw1": {"t/c.py": (3.0, 0)}},
        ),
        _run(tmp_path, "b", {"gw0": {"t/a.py": (2.0, 0.0)}, "gw1": {"t/b.py": (4.0, 0.0), "t/c.py": (3.5, 0)}}),
        _run(tmp_path, "c", {"gw1": {"t/a.py": (9.0, 0.0), "t/b.py": (6.0, 0.5)}}),
    ]
    costs = module_costs(runs)
    assert costs == {"t/b.py": 6.5, "t/c.py": 3.2, "t/a.py": 2.0}  # c: median of 3.0 and 3.5
    assert list(costs) == ["t/b.py", "t/c.py", "t/a.py"]
    text = summarise(runs)
    assert "3 run(s)" in text and text.index("t/b.py") < text.index("t/c.py") < text.index("t/a.py")


def test_the_plugin_writes_one_file_per_process_with_its_modules(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    plugin = CpuProfile(tmp_path / "out")

    class Item:
        nodeid = "tests/unit/test_x.py::test_y[1]"

    wrapper = plugin.pytest_runtest_protocol(Item(), None)
    next(wrapper)
    sum(i * i for i in range(20_000))  # some CPU inside the "test"
    try:
        next(wrapper)
    except StopIteration:
        pass
    plugin.pytest_collection_finish(None)
    plugin.pytest_sessionfinish(None, 0)
    data = json.loads((tmp_path / "out" / "gw7.json").read_text())
    assert data["worker"] == "gw7" and list(data["modules"]) == ["tests/unit/test_x.py"]
    own, kids, wall = data["tests"]["tests/unit/test_x.py::test_y[1]"]
    assert own >= 0 and kids >= 0 and wall > 0 and data["total_s"] >= data["startup_s"]
