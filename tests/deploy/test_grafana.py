"""deploy/grafana/: the PCM dashboard as Grafana provisions it.

Provisioning files point where docker-compose.yml mounts them; the dashboard has a stable uid,
a current schemaVersion and refers to the provisioned datasource by uid everywhere; every panel
has a query; every series a query selects is a docs/design.md metric (histograms as _bucket,
_sum, _count) with its documented labels; and promtool parses every query (variables
substituted).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"
DATASOURCES_DIR = GRAFANA_DIR / "provisioning" / "datasources"
PROVIDERS_DIR = GRAFANA_DIR / "provisioning" / "dashboards"
DASHBOARD = GRAFANA_DIR / "dashboards" / "pcm.json"
MIN_SCHEMA_VERSION = 39  # Grafana 10.3 / 11
GRAFANA_BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}


def load_yaml_dir(directory: Path) -> list[dict[str, Any]]:
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    assert files, f"no provisioning files in {directory}"
    return [yaml.safe_load(f.read_text(encoding="utf-8")) for f in files]


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    sources = [ds for doc in load_yaml_dir(DATASOURCES_DIR) for ds in doc.get("datasources", [])]
    assert len(sources) == 1, "exactly one provisioned datasource"
    return sources[0]


@pytest.fixture(scope="module")
def dashboard(promql) -> dict[str, Any]:
    return promql.load_dashboard(DASHBOARD)


@pytest.fixture(scope="module")
def query_panels(promql, dashboard) -> list[dict[str, Any]]:
    return [p for p in promql.iter_panels(dashboard) if p.get("type") != "row"]


def grafana_mounts(services) -> dict[str, Path]:
    """container target -> host path of the grafana service's bind mounts."""
    out = {}
    for vol in services["grafana"]["volumes"]:
        source, _, rest = vol.partition(":")
        if source.startswith("."):
            out[rest.split(":")[0]] = (REPO_ROOT / source).resolve()
    return out


def walk(node: Any, path: str = "$"):
    """(json path, key, value) for every key of every object in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


# --------------------------------------------------------------------------------------------
# provisioning, as mounted by docker-compose.yml
# --------------------------------------------------------------------------------------------


def test_provisioning_directory_mounted(services) -> None:
    mounts = grafana_mounts(services)
    assert mounts.get("/etc/grafana/provisioning") == GRAFANA_DIR / "provisioning"


def test_datasource(datasource, services) -> None:
    assert datasource["type"] == "prometheus"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", datasource["uid"])
    assert datasource.get("access", "proxy") == "proxy"
    assert datasource.get("isDefault") is True
    # The URL names the compose service and the port Prometheus listens on in its container.
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    published = services["prometheus"]["ports"]
    assert any(str(p).endswith(":9090") for p in published)
    # $__rate_interval needs the scrape interval.
    scrape_interval = yaml.safe_load(
        (REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    )["global"]["scrape_interval"]
    assert datasource.get("jsonData", {}).get("timeInterval") == scrape_interval


def test_dashboard_provider_points_at_mounted_dashboards(services) -> None:
    providers = [p for doc in load_yaml_dir(PROVIDERS_DIR) for p in doc.get("providers", [])]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["type"] == "file"
    container_path = provider["options"]["path"]
    mounts = grafana_mounts(services)
    assert container_path in mounts, f"{container_path} is not mounted into grafana"
    host_dir = mounts[container_path]
    assert host_dir == DASHBOARD.parent
    assert DASHBOARD.is_file()
    # The home dashboard setting names a file inside that mount.
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(container_path)
    assert (host_dir / Path(home).name).is_file()


# --------------------------------------------------------------------------------------------
# the dashboard JSON
# --------------------------------------------------------------------------------------------


def test_dashboard_identity(dashboard) -> None:
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard.get("uid", ""))
    assert dashboard.get("title")
    assert isinstance(dashboard.get("schemaVersion"), int)
    assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
    # A provisioned dashboard has no database id and no export-for-sharing placeholders.
    assert dashboard.get("id") is None
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8")


def test_datasource_referenced_by_uid_everywhere(dashboard, datasource) -> None:
    refs = [(path, value) for path, key, value in walk(dashboard) if key == "datasource"]
    assert refs
    for path, value in refs:
        assert isinstance(value, dict), f"{path}: datasource by name ({value!r}), use the uid"
        assert value.get("uid") == datasource["uid"], f"{path}: datasource uid {value}"
        assert value.get("type") == "prometheus", path


def test_every_panel_has_a_query(query_panels, promql, dashboard) -> None:
    assert len(query_panels) >= 10
    ids = [p.get("id") for p in promql.iter_panels(dashboard)]
    assert len(ids) == len(set(ids)) and None not in ids, "panel ids must be unique"
    for panel in query_panels:
        title = panel.get("title")
        assert title, f"panel {panel.get('id')} has no title"
        assert panel.get("datasource"), f"{title}: no datasource"
        targets = panel.get("targets") or []
        assert targets, f"{title}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), f"{title}: refIds {ref_ids}"
        for target in targets:
            assert (target.get("expr") or "").strip(), f"{title}/{target.get('refId')}: no expr"
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{title}: {pos}"


def test_panels_do_not_overlap(promql, dashboard) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in promql.iter_panels(dashboard):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_template_variables(dashboard, datasource, promql) -> None:
    defined = promql.template_variable_names(dashboard)
    assert {"run", "task", "trainer"} <= defined
    for query in promql.dashboard_queries(dashboard):
        unknown = promql.variables_used(query.raw_expr) - defined - GRAFANA_BUILTIN_VARS
        assert not unknown, f"{query.panel_title}: undefined variables {unknown}"
    # label_values() queries select DESIGN metrics and labels too.
    labels = promql.series_labels()
    for name, (selector, label) in promql.variable_queries(dashboard).items():
        (metric,) = promql.metric_names(selector)
        assert metric in labels, f"variable {name}: {metric} is not a DESIGN metric"
        assert label in labels[metric], f"variable {name}: {metric} has no label {label}"


def test_queried_metrics_are_design_metrics(promql, dashboard) -> None:
    allowed = promql.allowed_series_names()
    labels = promql.series_labels()
    for query in promql.dashboard_queries(dashboard):
        used = promql.metric_names(query.expr)
        where = f"{query.panel_title}/{query.ref_id}"
        assert used, f"{where}: no metric in {query.expr!r}"
        assert used <= allowed, f"{where}: not docs/design.md metrics: {sorted(used - allowed)}"
        for metric, matcher_labels in promql.selector_labels(query.expr):
            if metric in labels:
                extra = matcher_labels - labels[metric] - promql.TARGET_LABELS
                assert not extra, f"{where}: {metric} has no labels {extra}"


def test_every_design_metric_is_on_the_dashboard(promql, dashboard) -> None:
    used = set().union(*(promql.metric_names(e) for e in promql.dashboard_exprs(dashboard)))
    for name, (kind, _) in promql.DESIGN_METRICS.items():
        series = {name + s for s in promql.HISTOGRAM_SUFFIXES} if kind == "histogram" else {name}
        assert used & series, f"{name} is on no panel"


def test_required_panels(promql, dashboard) -> None:
    exprs = [" ".join(e.split()) for e in promql.dashboard_exprs(dashboard)]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"^pcm_selection_rate\{")
    assert has(r'rate\(pcm_chunks_total\{[^}]*kept="true"') and has(r"by \(phase\)")
    assert has(r"^pcm_keep_probability\{") and has(r"^pcm_phase_score\{")
    assert has(r"^pcm_success_rate\{")
    for q in ("0.5", "0.99"):
        assert has(rf"histogram_quantile\({q}, .*pcm_select_latency_seconds_bucket")
    assert has(r"sum by \([^)]*status[^)]*\) \(rate\(pcm_select_requests_total")
    assert has(r"rate\(pcm_outcome_reports_total")
    assert has(r"sum by \(stage\) \(rate\(pcm_trainer_stage_seconds_sum")
    assert has(r"rate\(pcm_store_errors_total")
    assert has(r"rate\(pcm_skipped_trajectories_total")


def test_queries_parse(promql, promtool, dashboard, tmp_path) -> None:
    """promtool parses every query, written as recording rules (it has no bare-query check)."""
    rules = [
        {"record": f"pcm_dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(promql.dashboard_exprs(dashboard))
    ]
    rules += [
        {"record": f"pcm_dashboard:variable_{name}", "expr": selector}
        for name, (selector, _) in promql.variable_queries(dashboard).items()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_metric_name_extraction(promql) -> None:
    """The PromQL scanner the checks above rely on."""
    names = promql.metric_names
    assert names('sum by (phase) (rate(pcm_chunks_total{run=~".*", kept="true"}[1m]))') == {
        "pcm_chunks_total"
    }
    assert names(
        "histogram_quantile(0.99, sum by (transport, le) "
        "(rate(pcm_select_latency_seconds_bucket[5m]))) > 1"
    ) == {"pcm_select_latency_seconds_bucket"}
    assert names("a / on (x) group_left (y) b offset 5m") == {"a", "b"}
    assert names('{__name__="pcm_phase_score"}') == {"pcm_phase_score"}
    assert names("sum(increase(x_total[1h])) or vector(0)") == {"x_total"}
    assert promql.substitute_variables('m{run=~"$run"}[$__rate_interval]') == 'm{run=~".*"}[1m]'
    assert promql.substitute_variables('m{a=~"${run:regex}"}', {"run": "d\\.x"}) == (
        'm{a=~"d\\\\.x"}'
    )
    with pytest.raises(ValueError, match="__unknown"):
        promql.substitute_variables("m[$__unknown]")
