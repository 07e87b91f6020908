"""The pure parts of ``bench cluster`` (issue 21): node counts, a run's figures from its metrics records and
CPU-seconds, the per-process CPU difference, ratios to the fewest nodes, arguments refused before any Ray."""

from __future__ import annotations

import argparse
import math

import pytest

from bench.cluster import add_arguments, cpu_diff, parse_nodes, relative, run, summarize
from common.errors import UserError


def test_node_counts_are_parsed_sorted_and_bounded():
    assert parse_nodes("3,1,2,2") == [1, 2, 3]
    assert parse_nodes(" 2 ") == [2]
    for bad in ("", "0,1", "a,b", "1,9"):
        with pytest.raises(UserError, match="--nodes"):
            parse_nodes(bad)


def test_a_runs_figures_come_from_its_metrics_records_and_the_cpu_of_its_processes():
    metrics = [
        {"examples_trained": 1000, "train_seconds": 0.5},
        {"examples_trained": 3000, "train_seconds": 1.5},
    ]
    r = summarize(metrics, seconds=40.0, cpu_s=60.0, s3_cpu_s=3.0)
    assert r["examples"] == 4000 and r["files"] == 2
    assert r["examples_per_s"] == pytest.approx(2000.0)  # training seconds: start-up excluded
    assert r["examples_per_wall_s"] == pytest.approx(100.0)  # the whole run
    assert r["cpu_s_per_1000"] == pytest.approx(15.0) and r["s3_cpu_s"] == 3.0
    empty = summarize([], seconds=1.0, cpu_s=1.0, s3_cpu_s=0.0)
    assert empty["examples"] == 0 and math.isnan(empty["examples_per_s"]) and math.isnan(empty["cpu_s_per_1000"])


def test_cpu_by_process_is_the_difference_largest_first_without_idle_ones():
    before = {"raylet": 10.0, "gcs_server": 5.0, "ray::ShardHost": 1.0}
    after = {"raylet": 12.5, "gcs_server": 5.0, "ray::ShardHost": 9.0, "ray::RayTrainWorker": 20.0}
    assert cpu_diff(before, after) == {"ray::RayTrainWorker": 20.0, "ray::ShardHost": 8.0, "raylet": 2.5}
    assert list(cpu_diff(before, after, top=1)) == ["ray::RayTrainWorker"]


def test_ratios_are_over_the_fewest_nodes():
    per_n = {1: {"cpu": 10.0}, 2: {"cpu": 13.0}, 3: {"cpu": 18.0}}
    assert relative(per_n, "cpu") == {"1": 1.0, "2": pytest.approx(1.3), "3": pytest.approx(1.8)}
    assert math.isnan(relative({2: {"cpu": float("nan")}, 3: {"cpu": 1.0}}, "cpu")["3"])


def _args(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_bad_arguments_are_refused_before_any_cluster_starts():
    with pytest.raises(UserError, match="--nodes"):
        run(_args("--nodes", "0"))
    with pytest.raises(UserError, match="--rows >= 10"):
        run(_args("--rows", "3"))
    with pytest.raises(UserError, match="--loss-after"):
        run(_args("--nodes", "1,2", "--files", "3", "--loss-after", "3"))
    # one node: no node to lose, so --loss-after is not checked
    assert _args("--nodes", "1", "--no-node-loss").node_loss is False


def test_cluster_is_registered_as_a_bench():
    from bench.cli import BENCHES

    assert "cluster" in BENCHES
