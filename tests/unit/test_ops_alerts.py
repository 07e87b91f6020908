"""monitoring/: the Prometheus alert rules and the Grafana dashboard.

promtool is not on PyPI, so the rules are checked by a parser test: the rule file's structure as
Prometheus reads it, every expression parsed by a real PromQL parser (promql-parser, the Rust
parser of GreptimeDB, via PyO3), every series a name freshrec exports (common/metrics.py, with
Ray's ``ray_`` prefix and the histogram suffixes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from common import metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "alerts.yaml"
DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"
EXPORTED = {n for d in metrics.DEFINITIONS for n in metrics.exported_names(d)}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def series_of(expr: str) -> set[str]:
    """Metric names an expression selects; ValueError when it does not parse."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"] and group["rules"]
        out += group["rules"]
    return out


def test_the_parser_catches_what_it_must():
    with pytest.raises(ValueError):
        series_of("sum(rate(ray_freshrec_ps_rows_pulled_total[5m])")
    assert series_of("rate(ray_freshrec_ps_rows_pulled_total[5m]) / on() group_left max(x)") == {
        "ray_freshrec_ps_rows_pulled_total",
        "x",
    }
    assert "freshrec_ps_rows_pulled_total" not in EXPORTED  # the name without Ray's prefix is not a series


def test_every_alert_rule_is_well_formed_and_uses_exported_series():
    seen = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert re.fullmatch(r"Freshrec[A-Za-z]+", rule["alert"]) and rule["alert"] not in seen
        seen.add(rule["alert"])
        assert DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used = series_of(rule["expr"])
        assert used and used <= EXPORTED, f"{rule['alert']}: {sorted(used - EXPORTED)} not exported by freshrec"
    # the five: version lag, freshness, error rate, AUC drop, dead-letter rate
    assert {
        "FreshrecReplicaVersionLag",
        "FreshrecFreshnessSlow",
        "FreshrecErrorRate",
        "FreshrecAUCDrop",
        "FreshrecDeadLetterRate",
    } <= seen


def test_alert_templates_name_only_labels_the_expression_keeps():
    for rule in rules():
        text = " ".join(rule["annotations"].values())
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert re.search(rf"by \(([^)]*\b{label}\b[^)]*)\)", rule["expr"]), (rule["alert"], label)


def test_the_dashboard_queries_parse_and_cover_every_metric():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    used, ids = set(), set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            names = series_of(target["expr"])
            assert names <= EXPORTED, f"{panel['title']}: {sorted(names - EXPORTED)}"
            used |= names
    defined = {d.name for d in metrics.DEFINITIONS}
    shown = {n.removeprefix(metrics.PROMETHEUS_PREFIX).removesuffix("_bucket") for n in used}
    assert defined <= shown, f"not on the dashboard: {sorted(defined - shown)}"


def test_promtool_checks_and_unit_tests_the_rules_when_it_is_installed():
    """Not installed by the Makefile (not on PyPI); Debian's `prometheus` package ships it."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus); the parser tests above stand in")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.parent / "alerts_test.yaml")]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)
        assert out.returncode == 0, out.stdout + out.stderr
