"""The measuring tools of issue 22: the capacity curve's verdict and PNG, the per-round ratios to the no-op
app, py-spy's collapsed stacks as shares, cProfile shares, the process-tree CPU, the grpcio launcher's
port file, and bench train's run keys. Pure logic and one real child process; no Ray."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cputree import ProcessTreeCPU, per_thousand
from bench.profiling import cprofile_calls, parse_collapsed, stage_of, summarize_collapsed
from bench.serve import APP_NAME, max_qps_within, plot_curve, round_ratios
from bench.train import run_key
from serving.grpc_server import read_port_file, wait_port_file, write_port_file


def _pt(p99, errors=0):
    return {"p50_ms": p99 / 2, "p99_ms": p99, "qps": 1.0, "errors": errors, "loadgen_cpu_share": 0.1}


def _curve(ours, floor, ours_err=()):
    qps = [25, 50, 100, 200, 400]
    return {
        "qps": qps,
        "freshrec": [_pt(p, 1 if i in ours_err else 0) for i, p in enumerate(ours)],
        "noop": [_pt(p) for p in floor],
    }


def test_max_qps_within_is_the_top_of_the_run_of_loads_that_keep_the_factor():
    floor = [10, 10, 12, 20, 60]
    assert max_qps_within(_curve([12, 14, 17, 29, 200], floor), "freshrec", "noop", 1.5) == 200
    assert max_qps_within(_curve([12, 14, 17, 31, 80], floor), "freshrec", "noop", 1.5) == 100
    # a later point back within the factor does not count: the curve must hold up to the load
    assert max_qps_within(_curve([12, 16, 17, 29, 80], floor), "freshrec", "noop", 1.5) == 25
    assert max_qps_within(_curve([16, 14, 17, 29, 80], floor), "freshrec", "noop", 1.5) is None
    # failed requests at a load: that load does not count, whatever the p99 of the answers
    assert max_qps_within(_curve([12, 14, 17, 29, 80], floor, ours_err=(2,)), "freshrec", "noop", 1.5) == 50


def test_round_ratios_pair_rounds_and_refuse_a_missing_one():
    ours, floor = [{"p99_ms": 30.0}, {"p99_ms": 12.0}], [{"p99_ms": 10.0}, {"p99_ms": 8.0}]
    assert round_ratios(ours, floor, "p99_ms") == [3.0, 1.5]
    with pytest.raises(ValueError):
        round_ratios(ours, floor[:1], "p99_ms")


def test_the_curve_png_is_written(tmp_path):
    out = plot_curve(_curve([12, 14, 17, 29, 200], [10, 10, 12, 20, 60]), str(tmp_path / "c.png"), 100)
    data = (tmp_path / "c.png").read_bytes()
    assert out.endswith("c.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_bench_targets_the_application_serving_deploys():
    import serving

    source = (Path(serving.__file__).parent / "app.py").read_text()  # not imported: it imports Ray Serve
    assert f'APP_NAME = "{APP_NAME}"' in source


COLLAPSED = """\
process 1:"ray::ServeReplica:freshrec:Scorer";thread (0x1);run (/x/lib/python3.11/asyncio/base_events.py:600);\
W.handle (ray/serve/_private/replica.py:10);ScoringService._score (serving/service.py:163);\
RequestFeatures.batch (serving/features.py:40) 30
Runner.run (asyncio/base_events.py:600);W.handle (/s/site-packages/ray/serve/_private/replica.py:10);\
ScoringService._score (serving/service.py:163);ServableModel.score (serving/model.py:90);\
Linear.forward (torch/nn/modules/linear.py:1) 50
Runner.run (asyncio/base_events.py:600);W.handle (ray/serve/_private/replica.py:10) 15
EpollSelector.select (/x/lib/python3.11/selectors.py:468) 5
garbage line
"""


def test_collapsed_stacks_become_shares_per_function_and_stage():
    stacks = parse_collapsed(COLLAPSED)
    assert len(stacks) == 4 and stacks[0][0][0] == "asyncio/base_events.py:run"  # thread/process frames dropped
    assert stacks[1][0][1] == "ray/serve/_private/replica.py:W.handle"  # absolute and relative paths alike
    s = summarize_collapsed(COLLAPSED, top=3)
    assert s["samples"] == 100
    assert s["own"][0] == ["torch/nn/modules/linear.py:Linear.forward", 0.5]
    assert dict(s["inclusive"])["serving/service.py:ScoringService._score"] == 0.8
    assert s["stages"] == {"forward": 0.5, "features": 0.3, "ray_serve": 0.15, "other": 0.05}
    assert abs(sum(s["stages"].values()) - 1.0) < 1e-9
    assert stage_of(["ray/serve/x.py:f", "serving/service.py:candidate_columns"]) == "request_conversion"
    assert summarize_collapsed("") == {"samples": 0}


def test_cprofile_shares_name_the_expensive_call_and_its_calls_per_request():
    def slow(n):
        return sum(i * i for i in range(n))

    def request(i):
        slow(20000)
        slow(10)

    out = cprofile_calls(request, 5, top=40)
    rows = {k: (share, per_req) for k, share, per_req in out["cumulative"]}
    key = next(k for k in rows if k.endswith(":slow"))
    assert rows[key][1] == 2.0 and rows[key][0] > 0.5


def test_process_tree_cpu_counts_a_child_that_has_ended():
    burn = "import time\nwhile time.process_time() < 0.4: pass\ntime.sleep(0.4)"
    with ProcessTreeCPU(interval_s=0.05) as tree:
        before = tree.snapshot()
        child = subprocess.Popen([sys.executable, "-c", burn])
        child.wait(timeout=120)
        time.sleep(0.05)
        used = tree.snapshot() - before
        names = tree.by_name()
    assert used >= 0.4  # the child's CPU, kept after it ended
    assert "python:-c" in names  # a plain python process is named by what it runs
    assert per_thousand(2.0, 4000) == 0.5 and per_thousand(1.0, 0) != per_thousand(1.0, 0)  # NaN without examples


def test_the_port_file_is_never_read_half_written(tmp_path):
    p = tmp_path / "g.port"
    assert read_port_file(p) is None
    p.write_text("")  # another writer's empty file: not a port
    assert read_port_file(p) is None
    write_port_file(p, 50123)
    assert read_port_file(p) == 50123 and sorted(x.name for x in tmp_path.iterdir()) == ["g.port"]


def test_waiting_for_a_port_says_when_the_server_died(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="ended \\(exit 3\\) before it wrote its port"):
        wait_port_file(tmp_path / "never.port", proc, timeout_s=60)


def test_run_keys_keep_the_recorded_names_for_two_shards():
    assert run_key((1, "ray", 0, 2)) == "1_workers_ray_depth_0"
    assert run_key((2, "ray", 1, 4)) == "2_workers_ray_depth_1_4_shards"


class _Store:
    """Manifests and gate decisions of three versions: v2 a held delta, v3 a published full cut."""

    def __init__(self):
        from types import SimpleNamespace as NS

        self.m = {
            1: NS(committed_at=10.5, kind="delta"),
            2: NS(committed_at=20.8, kind="delta"),
            3: NS(committed_at=30.9, kind="full"),
        }
        self.d = {1: {"code": "ok", "decided_at": 10.6}, 2: {"code": "small_window", "decided_at": 20.9}}

    def manifest(self, v):
        return self.m[v]

    def gate_decision(self, v):
        return self.d.get(v)


def test_freshness_is_split_into_trainer_gate_and_serving_parts():
    from bench.serve import freshness_summary

    landed = {"a.csv": 10.0, "b.csv": 20.0, "c.csv": 30.0, "lost.csv": 40.0}
    answers = [(9.0, 1), (10.2, 0), (10.9, 1), (21.0, 1), (31.5, 3), (32.0, 3)]  # b is first served by v3
    first_with = {"a.csv": 1, "b.csv": 2, "c.csv": 3}
    out = freshness_summary(landed, answers, first_with, _Store())
    assert out["freshness_files"] == 3 and out["freshness_held_files"] == 1
    slow = {r["file"]: r for r in out["freshness_slowest"]}
    assert slow["a.csv"]["fresh_s"] == pytest.approx(0.9)  # the answer at 9.0 came before it landed
    assert slow["b.csv"]["fresh_s"] == pytest.approx(11.5) and slow["b.csv"]["gate"] == "small_window"
    assert slow["c.csv"]["kind"] == "full" and slow["c.csv"]["commit_to_gate_s"] == 0.0  # no decision: commit time
    assert [r["file"] for r in out["freshness_slowest"]] == ["b.csv", "c.csv", "a.csv"]
    for r in out["freshness_slowest"]:
        parts = r["land_to_commit_s"] + r["commit_to_gate_s"] + r["gate_to_served_s"]
        assert parts == pytest.approx(r["fresh_s"], abs=2e-3)
    assert out["freshness_p99_s"] <= out["freshness_max_s"] == pytest.approx(11.5)
    assert freshness_summary({"x": 1.0}, [], {}, _Store())["freshness_files"] == 0


def test_device_cuda_is_refused_before_any_work_where_there_is_no_gpu():
    import torch

    from bench.ps import check_device
    from common.errors import UserError

    check_device("cpu")
    if torch.cuda.is_available():
        check_device("cuda")
    else:
        with pytest.raises(UserError, match="docs/gpu.md"):
            check_device("cuda")


def test_the_new_options_parse():
    from cluster.cli import build_parser

    p = build_parser()
    a = p.parse_args(["bench", "serve", "--curve", "--profile", "prof"])
    assert a.curve == "25,50,100,200,400" and a.profile == "prof" and a.fresh_files == 50
    assert p.parse_args(["bench", "serve", "--curve", "50,100"]).curve == "50,100"
    assert p.parse_args(["bench", "serve"]).curve == ""
    t = p.parse_args(["bench", "train", "--shards", "1,2,4", "--device", "cuda"])
    assert t.shards == "1,2,4" and t.device == "cuda"
    assert p.parse_args(["bench", "ps"]).device == "cpu"
