"""The monitoring/ configuration: Prometheus config and alert rules (checked and unit-tested with
promtool), the Grafana dashboard and provisioning, and the CloudWatch agent config.

promtool comes from Debian's `prometheus` package. Without it these tests skip on a laptop but
fail in CI (`CI` set), where it must be installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helpers import program

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "imgclf.json"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"
CLOUDWATCH = MONITORING / "cloudwatch" / "amazon-cloudwatch-agent.json"

# What the service exports on /metrics (imgclf/serving/metrics.py and the lead's additions),
# plus Prometheus' own `up`. A dashboard or alert naming anything else shows nothing.
EXPORTED_METRICS = frozenset(
    {
        "imgclf_requests_total",
        "imgclf_overloaded_total",
        "imgclf_request_latency_seconds_bucket",
        "imgclf_request_latency_seconds_count",
        "imgclf_request_latency_seconds_sum",
        "imgclf_predictions_total",
        "imgclf_prediction_confidence_bucket",
        "imgclf_prediction_confidence_count",
        "imgclf_prediction_confidence_sum",
        "imgclf_inference_batch_size_bucket",
        "imgclf_inference_batch_size_count",
        "imgclf_inference_batch_size_sum",
        "imgclf_model_version",
        "imgclf_prediction_log_dropped_total",
        "imgclf_feedback_total",
        "imgclf_live_accuracy",
        "imgclf_live_accuracy_samples",
        "imgclf_live_recall",
        "imgclf_champion_test_accuracy",
        "imgclf_process_cpu_seconds_total",
        "imgclf_process_resident_memory_bytes",
        "up",
    }
)

# The service's own JSON lines go to CloudWatch through Docker's awslogs driver (release.sh's
# IMGCLF_DOCKER_ARGS, docs/operations.md); the agent ships what runs outside containers.
HOST_LOGS = (
    "/var/log/nginx/access.log",
    "/var/log/nginx/error.log",
)

# PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan"}
)

# Grafana's variables, replaced by plain values so a dashboard query parses as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
}


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool: skip without it locally, fail in CI."""
    return program("promtool", "prometheus")


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """promtool succeeded; on failure show everything it said."""
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml (recording rules left out)."""
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords,
    label names (inside {...} or grouping lists), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside `node`, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and annotation queries."""
    return [node["expr"] for node in walk(dashboard) if isinstance(node.get("expr"), str)]


def expand_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def alert_test_cases(test_file: Path) -> list[dict[str, Any]]:
    """alert_rule_test entries of a promtool test file, each with its group's name."""
    groups = load_yaml(test_file)["tests"]
    return [
        {**case, "group": group.get("name", "?")}
        for group in groups
        for case in group.get("alert_rule_test", [])
    ]


# --- Prometheus: promtool ---------------------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str) -> None:
    # `check config` also loads rule_files, resolved next to prometheus.yml.
    result = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert_ok(result)
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "check", "rules", ALERTS))


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "test", "rules", ALERTS_TEST))


def test_a_broken_alert_rule_fails_its_unit_tests(promtool: str, tmp_path: Path) -> None:
    """Loosen the accuracy threshold from 2 to 3 points: the 2.5-point case must stop firing
    and `promtool test rules` must say so. Proves the unit tests can fail."""
    rules = ALERTS.read_text()
    broken = rules.replace(
        "imgclf_champion_test_accuracy - 0.02", "imgclf_champion_test_accuracy - 0.03"
    )
    assert broken != rules, "the accuracy threshold moved: update this test"
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")

    result = run_promtool(promtool, "test", "rules", tmp_path / "alerts_test.yml")

    assert result.returncode != 0, result.stdout + result.stderr
    assert "ImgclfAccuracyDrop" in result.stdout + result.stderr


def test_prometheus_scrapes_the_service(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    imgclf = jobs["imgclf"]
    assert imgclf.get("metrics_path", "/metrics") == "/metrics"
    # One static entry, one target: what tests rewrite to 127.0.0.1:PORT.
    assert imgclf["static_configs"] == [{"targets": ["imgclf:3000"]}]


# --- Prometheus: alerts and their tests -------------------------------------------------------


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    cases = alert_test_cases(ALERTS_TEST)
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if case.get("exp_alerts", []) == []}
    alerts = {rule["alert"] for rule in alert_rules()}

    assert alerts - fired == set(), "alerts with no test case where they fire"
    assert alerts - quiet == set(), "alerts with no test case where they stay quiet"
    assert (fired | quiet) - alerts == set(), "test cases for alerts that do not exist"


def test_firing_cases_check_labels_and_annotations() -> None:
    for case in alert_test_cases(ALERTS_TEST):
        for alert in case.get("exp_alerts") or []:
            where = f"{case['group']} / {case['alertname']} at {case['eval_time']}"
            assert alert.get("exp_labels", {}).get("severity"), where
            assert {"summary", "description"} <= set(alert.get("exp_annotations", {})), where


def test_alerts_have_severity_and_annotations() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))


def test_alerts_use_only_exported_metrics() -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert names <= EXPORTED_METRICS, f"{rule['alert']}: unknown {names - EXPORTED_METRICS}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job="imgclf"} == 0', {"up"}),
        (
            'histogram_quantile(0.95, sum by (job, le) (rate(imgclf_x_bucket{a=~"b|c"}[5m])))',
            {"imgclf_x_bucket"},
        ),
        ("a < on(job, instance) (b - 0.02) and on(job) c >= 1e2", {"a", "b", "c"}),
        ("rate(imgclf_typo_total[$__rate_interval]) offset 5m", {"imgclf_typo_total"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    # The metric checks are only as good as this parser: it must find typos, not hide them.
    assert metric_names(expr) == expected


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "imgclf-service"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "${DS_PROMETHEUS}" not in DASHBOARD.read_text()  # no import-time inputs
    assert "__inputs" not in dashboard


def test_dashboard_panels_have_unique_ids_and_targets() -> None:
    panels = list(walk(load_dashboard()["panels"]))
    panels = [p for p in panels if "gridPos" in p]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: empty expr"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    refs = [
        n["datasource"] for n in walk(load_dashboard()) if isinstance(n.get("datasource"), dict)
    ]
    prometheus_refs = [ref for ref in refs if ref.get("type") == "prometheus"]
    assert prometheus_refs
    assert all(ref == {"type": "prometheus", "uid": "prometheus"} for ref in prometheus_refs)
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert datasources["datasources"][0]["uid"] == "prometheus"
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "imgclf.yml")["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_uses_only_exported_metrics() -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names <= EXPORTED_METRICS, f"unknown {names - EXPORTED_METRICS} in {expr!r}"
        used |= names
    # Each exported family is on some panel (histograms through one of their series).
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in EXPORTED_METRICS}
    shown = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert families - shown == set(), "exported metrics no panel shows"


def test_dashboard_shows_the_per_class_metrics() -> None:
    """Class mix, live recall and feedback, each per class (the `label` label)."""
    exprs = dashboard_exprs(load_dashboard())
    for metric in ("imgclf_predictions_total", "imgclf_feedback_total"):
        assert any(metric in e and re.search(r"by \(label\b", e) for e in exprs), metric
    assert any(e.startswith("imgclf_live_recall{") for e in exprs)


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no offline query parser: wrap each query in a recording rule and check it."""
    exprs = [expand_grafana_variables(expr) for expr in dashboard_exprs(load_dashboard())]
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run_promtool(promtool, "check", "rules", rule_file))


# --- CloudWatch ------------------------------------------------------------------------------


def test_cloudwatch_agent_config() -> None:
    config = json.loads(CLOUDWATCH.read_text())
    collected = config["logs"]["logs_collected"]["files"]["collect_list"]
    by_path = {entry["file_path"]: entry for entry in collected}
    assert set(HOST_LOGS) <= set(by_path)
    assert by_path["/var/log/nginx/access.log"]["log_group_name"] == "/imgclf/nginx/access"
    metrics = config["metrics"]["metrics_collected"]
    assert "mem_used_percent" in metrics["mem"]["measurement"]
    assert {"cpu", "disk"} <= set(metrics)
