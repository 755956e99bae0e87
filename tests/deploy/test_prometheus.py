"""deploy/prometheus/: promtool accepts the config and rules, the alert unit tests pass, and the
scrape setup matches docker-compose.yml and docs/design.md (the selector is the only PCM
target).

promtool comes from Debian's `prometheus` package; without it these tests fail (not skip).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROM_DIR / "prometheus.yml"
ALERTS_YML = PROM_DIR / "alerts.yml"
ALERTS_TEST_YML = PROM_DIR / "alerts_test.yml"
SELECTOR_JOB = "pcm-selector"
REQUIRED_ALERTS = {
    "PCMSelectorDown",
    "PCMStoreErrors",
    "PCMSelectLatencyHigh",
    "PCMNoOutcomeReports",
    "PCMSelectErrors",
}


def promtool_run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> dict[str, dict]:
    return {
        rule["alert"]: rule
        for group in load(ALERTS_YML)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


# --------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------


def test_promtool_check_config(promtool) -> None:
    out = promtool_run(promtool, "check", "config", PROMETHEUS_YML)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_rules(promtool) -> None:
    out = promtool_run(promtool, "check", "rules", ALERTS_YML)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_alert_unit_tests(promtool) -> None:
    out = promtool_run(promtool, "test", "rules", ALERTS_TEST_YML)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_unit_tests_cover_every_alert() -> None:
    tested = {
        case["alertname"]
        for test in load(ALERTS_TEST_YML)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == set(alert_rules()), "every alert needs a test where it fires"


# --------------------------------------------------------------------------------------------
# scrape configuration
# --------------------------------------------------------------------------------------------


def _jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in load(PROMETHEUS_YML)["scrape_configs"]}


def test_scrapes_selector_metrics_on_its_http_port(services) -> None:
    http_port = int(services["selector"]["environment"]["PCM_HTTP_PORT"])
    job = _jobs()[SELECTOR_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"selector:{http_port}"]


def test_trainers_are_not_scraped() -> None:
    # Decision (docs/deploy.md): trainers' metrics reach Prometheus through the selector's
    # outcome reports; scaled, ephemeral trainer replicas have no stable address to scrape.
    assert set(_jobs()) == {SELECTOR_JOB, "prometheus"}
    for job in _jobs().values():
        for sc in job.get("static_configs", []):
            assert not any("trainer" in t for t in sc["targets"])


def test_rule_files_exist_next_to_config() -> None:
    rule_files = load(PROMETHEUS_YML)["rule_files"]
    assert rule_files, "alert rules not loaded"
    for rule_file in rule_files:
        assert (PROM_DIR / rule_file).is_file(), rule_file
    assert "alerts.yml" in rule_files


def test_compose_mounts_config_where_prometheus_reads_it(services, repo_root) -> None:
    prom = services["prometheus"]
    args = prom["command"]
    config_flag = next(a for a in args if a.startswith("--config.file="))
    config_in_container = Path(config_flag.split("=", 1)[1])
    mounts = {}
    for vol in prom["volumes"]:
        source, _, rest = vol.partition(":")
        mounts[rest.split(":")[0]] = source
    host_dir = mounts[str(config_in_container.parent)]
    assert (repo_root / host_dir).resolve() == PROM_DIR
    assert (PROM_DIR / config_in_container.name).is_file()


# --------------------------------------------------------------------------------------------
# alert rules
# --------------------------------------------------------------------------------------------


def test_required_alerts_present() -> None:
    rules = alert_rules()
    assert set(rules) >= REQUIRED_ALERTS, f"missing: {REQUIRED_ALERTS - set(rules)}"
    for name, rule in rules.items():
        assert rule.get("for"), f"{name}: no `for`, would fire on a single evaluation"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
        assert rule.get("annotations", {}).get("summary"), f"{name}: no summary"
        assert rule.get("annotations", {}).get("description"), f"{name}: no description"


def test_alert_expressions() -> None:
    rules = alert_rules()
    assert " ".join(rules["PCMSelectorDown"]["expr"].split()) == f'up{{job="{SELECTOR_JOB}"}} == 0'
    assert "increase(pcm_store_errors_total" in rules["PCMStoreErrors"]["expr"]
    latency = " ".join(rules["PCMSelectLatencyHigh"]["expr"].split())
    assert latency.startswith("histogram_quantile(0.99,")
    assert "pcm_select_latency_seconds_bucket" in latency
    outcome = " ".join(rules["PCMNoOutcomeReports"]["expr"].split())
    assert "increase(pcm_outcome_reports_total" in outcome and outcome.endswith("== 0")


def test_alert_job_is_the_scrape_job() -> None:
    assert SELECTOR_JOB in _jobs()
    assert f'job="{SELECTOR_JOB}"' in alert_rules()["PCMSelectorDown"]["expr"]


def test_alert_metrics_are_design_metrics(promql) -> None:
    allowed = promql.allowed_series_names()
    labels = promql.series_labels()
    for name, rule in alert_rules().items():
        used = promql.metric_names(rule["expr"])
        assert used, f"{name}: no metric found in {rule['expr']!r}"
        assert used <= allowed, f"{name}: not docs/design.md metrics: {used - allowed}"
        for metric, matcher_labels in promql.selector_labels(rule["expr"]):
            if metric in labels:
                extra = matcher_labels - labels[metric] - promql.TARGET_LABELS
                assert not extra, f"{name}: {metric} has no labels {extra}"


# --------------------------------------------------------------------------------------------
# the local-Prometheus rewrite (tests/deploy/promql.py), used by end-to-end tests
# --------------------------------------------------------------------------------------------


def test_local_prometheus_config(promql, promtool, tmp_path) -> None:
    text = promql.local_prometheus_config(
        {SELECTOR_JOB: 18000, "prometheus": 19090}, scrape_interval="1s"
    )
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[SELECTOR_JOB]["static_configs"][0]["targets"] == ["127.0.0.1:18000"]
    assert jobs[SELECTOR_JOB]["static_configs"][0]["labels"] == {"service": "selector"}
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:19090"]
    assert config["global"]["scrape_interval"] == "1s"
    assert all(Path(r).is_absolute() and Path(r).is_file() for r in config["rule_files"])

    path = tmp_path / "prometheus.yml"  # elsewhere than deploy/: rule paths must still resolve
    path.write_text(text, encoding="utf-8")
    out = promtool_run(promtool, "check", "config", path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_local_prometheus_config_drops_other_jobs_and_rejects_unknown(promql) -> None:
    config = yaml.safe_load(promql.local_prometheus_config({SELECTOR_JOB: 18000}))
    assert [job["job_name"] for job in config["scrape_configs"]] == [SELECTOR_JOB]
    with pytest.raises(KeyError, match="no-such-job"):
        promql.local_prometheus_config({"no-such-job": 1})
