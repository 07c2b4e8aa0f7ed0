"""Alerts and dashboard queries, checked by the real ``promtool`` (Debian's prometheus package).

- The alert rules (single source: helm/winnow/files/alerts.yaml) are rendered by helm; the committed
  plain rules file deploy/prometheus/winnow-alerts.rules.yaml must equal the rendering.
- ``promtool check rules`` on them, and ``promtool test rules`` with synthetic series
  (deploy/prometheus/winnow-alerts.test.yaml): every alert fires when unhealthy and stays silent when
  healthy; a changed threshold makes those unit tests fail.
- Every Grafana panel expression is wrapped as a recording rule and checked by ``promtool check rules``.
- Every metric the dashboard and the alerts use is documented in docs/metrics.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, ROOT

pytestmark = pytest.mark.helm

RULES = ROOT / "deploy" / "prometheus" / "winnow-alerts.rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "winnow-alerts.test.yaml"
DASHBOARD = CHART / "dashboards" / "winnow.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
ALERTS = {"WinnowEntropyCollapse", "WinnowLearnerStalled", "WinnowVerifierErrorRate",
          "WinnowGeneratorVerifierErrors", "WinnowConsumerLagGrowing", "WinnowGeneratorWeightsBehind",
          "WinnowTrainingInferenceMismatch"}
# Grafana's built-in variables are not PromQL; they are replaced by typical values before checking.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}

# The metric names the services implement (the contract the dashboard and alerts rely on).
CONTRACT = """
winnow_verifier_requests_total winnow_verifier_items_total winnow_verifier_item_latency_seconds
winnow_verifier_request_latency_seconds winnow_verifier_worker_restarts_total winnow_verifier_cache_hits_total
winnow_verifier_cache_misses_total winnow_verifier_cache_hit_ratio winnow_verifier_inflight_items
winnow_verifier_paths_total
winnow_learner_weight_version winnow_learner_steps_total winnow_learner_acceptance_ratio
winnow_learner_kept_group_ratio winnow_learner_groups_total winnow_learner_samples_total winnow_learner_entropy
winnow_learner_kl winnow_learner_clipped_token_ratio winnow_learner_importance_ratio_mean
winnow_learner_importance_ratio_max winnow_learner_effective_sample_size winnow_learner_reward_mean
winnow_learner_loss winnow_learner_staleness_versions winnow_learner_tokens_total winnow_learner_tokens_per_second
winnow_learner_step_phase_seconds winnow_learner_last_step_timestamp_seconds winnow_learner_prompts_released_total
winnow_learner_eval_accuracy winnow_learner_eval_mean_at_k winnow_learner_grad_norm winnow_learner_learning_rate
winnow_learner_response_length_mean winnow_learner_truncated_ratio winnow_learner_mismatch_kl
winnow_learner_mismatch_max_abs_log_ratio winnow_learner_run_finished winnow_build_info
winnow_learner_beta_acceptance_ratio winnow_learner_beta_identity winnow_learner_snis_ess_ratio
winnow_learner_pg_loss winnow_learner_staleness_mean winnow_learner_kept_sample_ratio
winnow_learner_beta_groups_accepted winnow_learner_published_changed_ratio
winnow_generator_tokens_total winnow_generator_groups_published_total winnow_generator_requests_in_flight
winnow_generator_weight_version winnow_generator_weight_reload_seconds winnow_generator_weight_reload_failures_total
winnow_generator_verifier_latency_seconds winnow_generator_verifier_errors_total winnow_generator_consumer_lag
winnow_generator_generation_seconds winnow_generator_corrupt_messages_total
""".split()


def promtool(promtool_bin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool_bin, *args], capture_output=True, text=True, timeout=120)


def load_render_rules():
    spec = importlib.util.spec_from_file_location("render_rules", ROOT / "deploy" / "render_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bwinnow_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if not n.endswith("_total") else n for n in names}


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(winnow_[a-z0-9_]+)`", METRICS_DOC.read_text(), flags=re.M))


# ---------------------------------------------------------------------------------------------------
# alerts


def test_rules_file_matches_the_chart_source(helm_bin) -> None:
    rendered = load_render_rules().render(helm=helm_bin)
    assert rendered == RULES.read_text(), (
        "deploy/prometheus/winnow-alerts.rules.yaml is stale: run .venv/bin/python deploy/render_rules.py")
    groups = yaml.safe_load(rendered)["groups"]
    assert {r["alert"] for g in groups for r in g["rules"]} == ALERTS


def test_promtool_check_rules(promtool_bin) -> None:
    proc = promtool(promtool_bin, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_promtool_unit_tests_fire_when_unhealthy_and_not_when_healthy(promtool_bin) -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert tested == ALERTS, f"alerts without a unit test: {ALERTS - tested}"
    proc = promtool(promtool_bin, "test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_catch_a_changed_threshold(promtool_bin, helm_bin, tmp_path) -> None:
    # With a fraction of 0.05 the collapsed entropy (0.2 >= 0.05 * 2.0 = 0.1) no longer alerts, and the
    # learner-stalled threshold of 30 minutes is not reached at 30m: the unit tests must notice.
    text = load_render_rules().render(["monitoring.prometheusRule.alerts.entropyCollapseFraction=0.05",
                                       "monitoring.prometheusRule.alerts.learnerStalledMinutes=30"], helm=helm_bin)
    (tmp_path / RULES.name).write_text(text)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = promtool(promtool_bin, "test", "rules", str(tmp_path / RULE_TESTS.name))
    assert proc.returncode != 0
    assert "WinnowEntropyCollapse" in proc.stdout + proc.stderr
    assert "WinnowLearnerStalled" in proc.stdout + proc.stderr


def test_alert_thresholds_are_chart_values(promtool_bin, helm_bin, tmp_path) -> None:
    sets = {"entropyCollapseFraction": "0.35", "entropyWindow": "12h", "verifierErrorRatio": "0.1",
            "consumerLagThreshold": "250", "learnerStalledMinutes": "45", "weightVersionLag": "7", "for": "3m"}
    text = load_render_rules().render([f"monitoring.prometheusRule.alerts.{k}={v}" for k, v in sets.items()],
                                      helm=helm_bin)
    rules = {r["alert"]: r for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    assert "0.35 * max_over_time(winnow_learner_entropy[12h])" in rules["WinnowEntropyCollapse"]["expr"]
    assert "> 0.1" in rules["WinnowVerifierErrorRate"]["expr"]
    assert "> 250" in rules["WinnowConsumerLagGrowing"]["expr"]
    assert "> 45 * 60" in rules["WinnowLearnerStalled"]["expr"]
    assert "> 7" in rules["WinnowGeneratorWeightsBehind"]["expr"]
    assert rules["WinnowEntropyCollapse"]["for"] == "3m"
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    proc = promtool(promtool_bin, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------
# dashboard


def test_every_dashboard_query_is_valid_promql(promtool_bin, tmp_path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    rules = []
    for i, (_, expr) in enumerate(exprs):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$__" not in expr, f"unhandled Grafana variable in {expr}"
        rules.append({"record": f"winnow:dashboard:q{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "winnow-dashboard", "rules": rules}]}))
    proc = promtool(promtool_bin, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_promtool_rejects_a_broken_query(promtool_bin, tmp_path) -> None:
    # the check above can fail: an unbalanced expression is rejected
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (le (rate(winnow_learner_entropy[5m]))"}]}]}))
    assert promtool(promtool_bin, "check", "rules", str(path)).returncode != 0


def test_dashboard_panels_cover_the_signals() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Loss", "Gradient norm (before clipping)", "Learning rate", "Response length and truncation",
                   "Train/inference mismatch", "Eval", "CPU (cores)", "Resident memory",
                   "Acceptance ratio", "Kept-group ratio", "Entropy (mean token)", "KL to reference (k3)",
                   "Staleness (versions) quantiles", "Tokens per second", "Verifier items by status",
                   "Verifier item latency", "Consumer lag (prompts)", "Weight version: learner vs generators",
                   "Learner step phases (mean)"):
        assert needed in titles
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert "histogram_quantile(0.9, sum by (le) (rate(winnow_learner_staleness_versions_bucket" in exprs
    assert "winnow_learner_tokens_total" in exprs and "winnow_generator_tokens_total" in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "run", "job", "instance"}
    # one run at a time: two releases in a namespace never merge into one curve
    assert variables["run"]["multi"] is False and variables["run"]["includeAll"] is False
    for _, expr in dashboard_exprs():
        for selector in re.findall(r"\{([^}]*)\}", expr):
            if "namespace" in selector:  # every series selector narrows by all four variables
                for var in ("namespace", "run", "job", "instance"):
                    assert f'{var}=~"${var}"' in selector, (var, expr)
    # the training panels sit above the operator panels, on the first screen
    first = [p["title"] for p in dash["panels"] if p["gridPos"]["y"] < 17]
    assert {"Loss", "Gradient norm (before clipping)", "Eval"} <= set(first)


def test_metrics_used_are_documented() -> None:
    documented = documented_metrics()
    missing = set(CONTRACT) - documented
    assert not missing, f"docs/metrics.md lacks {sorted(missing)}"
    used = set()
    for _, expr in dashboard_exprs():
        used |= metric_names(expr)
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            used |= metric_names(r["expr"])
    undocumented = used - documented
    assert not undocumented, f"dashboard/alerts use undocumented metrics {sorted(undocumented)}"
    unknown = used - set(CONTRACT)
    assert not unknown, f"dashboard/alerts use metrics outside the services' contract {sorted(unknown)}"


def metrics_in_code(module: str, table: str) -> set[str]:
    """Exposed metric names of a service: the Prometheus names of its metric table (rows of winnow/metric_defs.Metric,
    the only place a collector is declared; tests/generator/test_metrics.py and tests/verifier/test_service_metrics.py
    check that the registries built from the tables expose exactly these)."""
    return {m.prom for m in getattr(importlib.import_module(module), table) if m.prom}


@pytest.mark.parametrize("service, module, table", [
    ("verifier", "winnow.verifier.service_metrics", "VERIFIER"),
    ("generator", "winnow.generator.metrics", "GENERATOR"),
    ("learner", "winnow.learner.metric_table", "LEARNER"),
])
def test_metric_docs_match_the_code(service, module, table) -> None:
    """Every metric a service defines is documented, every documented one exists (no drift), and every name of the
    dashboards' contract is defined."""
    prefix = f"winnow_{service}_"
    in_code = {n for n in metrics_in_code(module, table) if n.startswith(prefix)}
    documented = {n for n in documented_metrics() if n.startswith(prefix)}
    assert in_code, f"no metrics found in {module}.{table}"
    assert in_code == documented, (
        f"undocumented: {sorted(in_code - documented)}; documented but not in code: {sorted(documented - in_code)}")
    contract = {n for n in CONTRACT if n.startswith(prefix)}
    assert contract <= in_code, f"the dashboards' contract names metrics the code lacks: {sorted(contract - in_code)}"


def test_chart_dashboard_is_the_file(helm_bin) -> None:
    # the ConfigMap carries the JSON byte for byte (Files.Get), so editing the file is enough
    out = subprocess.run([helm_bin, "template", "x", str(CHART), "--set", "kafka.bootstrapServers=k:9092",
                          "--show-only", "templates/dashboard.yaml"], capture_output=True, text=True, check=True).stdout
    cm = yaml.safe_load(out)
    assert cm["data"]["winnow.json"] == DASHBOARD.read_text().rstrip("\n")


def test_metrics_doc_exists_with_formulas() -> None:
    text = METRICS_DOC.read_text()
    assert "(sum w)^2 / (N sum w^2)" in text  # ESS
    assert "w_t - 1 - log w_t" in text  # k3
    assert Path(RULES).exists()


def test_plain_prometheus_config(promtool_bin) -> None:
    """deploy/prometheus/prometheus.yml (outside Kubernetes) is valid, loads the alert rules, and scrapes
    each service on its default metrics port."""
    path = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    proc = promtool(promtool_bin, "check", "config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout
    cfg = yaml.safe_load(path.read_text())
    ports = {j["job_name"]: int(j["static_configs"][0]["targets"][0].rsplit(":", 1)[1]) for j in cfg["scrape_configs"]}
    defaults = {}
    for service, module, cls in (("verifier", "winnow.verifier.config", "VerifierConfig"),
                                 ("generator", "winnow.generator.config", "GeneratorConfig"),
                                 ("learner", "winnow.learner.config", "LearnerConfig")):
        try:
            config_cls = getattr(importlib.import_module(module), cls)
        except ModuleNotFoundError:
            continue
        defaults[f"winnow-{service}"] = config_cls.model_fields["metrics_port"].default
    assert defaults, "no service config importable"
    for job, port in defaults.items():
        assert ports[job] == port, f"{job}: prometheus.yml scrapes {ports[job]}, the service default is {port}"
