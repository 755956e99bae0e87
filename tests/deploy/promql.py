"""PromQL and Prometheus-config helpers for the deployment tests.

Used by tests/deploy/ now, and meant for a later end-to-end test that runs the real selector,
trainers and a local Prometheus (Debian's `prometheus`) and evaluates every dashboard query
through Prometheus's HTTP API:

    from promql import dashboard_exprs, local_prometheus_config
    cfg = local_prometheus_config({"pcm-selector": selector_http_port}, scrape_interval="1s")
    (tmp / "prometheus.yml").write_text(cfg)        # then: prometheus --config.file=...
    for expr in dashboard_exprs(values={"run": "e2e"}):
        ...  # GET /api/v1/query?query=<expr>, expect status "success" and some data

Nothing here needs the services, a Docker engine or the network; only PyYAML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
DASHBOARD_PATH = DEPLOY_DIR / "grafana" / "dashboards" / "pcm.json"
PROMETHEUS_YML = DEPLOY_DIR / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY_DIR / "prometheus" / "alerts.yml"

# docs/design.md, "Prometheus metrics": the selector's metrics, their type and labels. A
# histogram `h` is queried as h_bucket (plus label `le`), h_sum and h_count.
DESIGN_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "pcm_select_requests_total": ("counter", frozenset({"transport", "status"})),
    "pcm_select_latency_seconds": ("histogram", frozenset({"transport"})),
    "pcm_chunks_total": ("counter", frozenset({"run", "task", "phase", "kept"})),
    "pcm_keep_probability": ("gauge", frozenset({"run", "task", "phase"})),
    "pcm_phase_score": ("gauge", frozenset({"run", "task", "phase"})),
    "pcm_selection_rate": ("gauge", frozenset({"run"})),
    "pcm_keep_fraction": ("gauge", frozenset({"run"})),
    "pcm_predicted_efficiency": ("gauge", frozenset({"run"})),
    "pcm_predicted_rate": ("gauge", frozenset({"run"})),
    "pcm_skipped_trajectories_total": ("counter", frozenset({"run"})),
    "pcm_outcome_reports_total": ("counter", frozenset({"run", "status"})),
    "pcm_success_rate": ("gauge", frozenset({"run", "trainer"})),
    "pcm_trainer_stage_seconds": ("histogram", frozenset({"run", "trainer", "stage"})),
    "pcm_store_errors_total": ("counter", frozenset({"op"})),
    "pcm_run_config_info": ("gauge", frozenset({"run", "mode", "score", "weighting"})),
    "pcm_select_staleness": ("histogram", frozenset()),
    "pcm_select_conflicts_total": ("counter", frozenset({"reason"})),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus itself makes for every target; `up` is what "selector down" is about.
PROMETHEUS_SYNTHETIC = frozenset({"up"})
# Labels every scraped series carries: the target's, from prometheus.yml.
TARGET_LABELS = frozenset({"job", "instance", "service"})


def series_labels() -> dict[str, frozenset[str]]:
    """Every series name the selector exports (histograms expanded) -> its allowed labels."""
    out: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in DESIGN_METRICS.items():
        if kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


def allowed_series_names() -> frozenset[str]:
    """Series names a dashboard or alert may query: docs/design.md's, plus Prometheus's `up`."""
    return frozenset(series_labels()) | PROMETHEUS_SYNTHETIC


# ---------------------------------------------------------------------------------------------
# Grafana dashboard queries
# ---------------------------------------------------------------------------------------------

# Grafana's built-in interval variables, replaced by fixed PromQL durations.
DEFAULT_INTERVALS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
_VAR_RE = re.compile(r"\$\{(?P<b>\w+)(?::[^}]*)?\}|\[\[(?P<k>\w+)(?::[^\]]*)?\]\]|\$(?P<p>\w+)")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one dashboard panel."""

    panel_id: int | None
    panel_title: str
    ref_id: str
    raw_expr: str  # as stored in the dashboard, with template variables
    expr: str  # variables substituted: plain PromQL


def load_dashboard(path: Path | str = DASHBOARD_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def template_variable_names(dashboard: Mapping[str, Any]) -> set[str]:
    return {v["name"] for v in dashboard.get("templating", {}).get("list", [])}


def variables_used(expr: str) -> set[str]:
    """Names of the template variables in an expression (built-ins like __rate_interval too)."""
    return {m.group("b") or m.group("k") or m.group("p") for m in _VAR_RE.finditer(expr)}


def _promql_string_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def substitute_variables(
    expr: str,
    values: Mapping[str, str] | None = None,
    *,
    default: str = ".*",
    intervals: Mapping[str, str] | None = None,
) -> str:
    """Replace Grafana template variables with plain values.

    Built-in interval variables ($__rate_interval, ...) become durations from `intervals`
    (defaults: DEFAULT_INTERVALS); an unknown built-in raises ValueError. Other variables take
    `values[name]`, else `default` (".*": the dashboard uses its variables only in regex
    matchers, label=~"$run", so ".*" means "all"). Values land inside PromQL double-quoted
    strings and are escaped for that.
    """
    values = values or {}
    intervals = {**DEFAULT_INTERVALS, **(intervals or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group("b") or m.group("k") or m.group("p")
        if name.startswith("__"):
            if name not in intervals:
                raise ValueError(f"unsupported Grafana built-in variable ${name} in {expr!r}")
            return intervals[name]
        return _promql_string_escape(values.get(name, default))

    return _VAR_RE.sub(repl, expr)


def dashboard_queries(
    dashboard: Mapping[str, Any] | None = None,
    *,
    values: Mapping[str, str] | None = None,
    intervals: Mapping[str, str] | None = None,
) -> list[PanelQuery]:
    """Every panel target's PromQL, with template variables substituted (see
    substitute_variables). Rows and targets without an `expr` are left out."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            raw = (target.get("expr") or "").strip()
            if not raw:
                continue
            out.append(
                PanelQuery(
                    panel_id=panel.get("id"),
                    panel_title=panel.get("title", ""),
                    ref_id=target.get("refId", ""),
                    raw_expr=raw,
                    expr=substitute_variables(raw, values, intervals=intervals),
                )
            )
    return out


def dashboard_exprs(
    dashboard: Mapping[str, Any] | None = None,
    *,
    values: Mapping[str, str] | None = None,
    intervals: Mapping[str, str] | None = None,
) -> list[str]:
    """The PromQL of every dashboard query, ready for Prometheus's /api/v1/query."""
    return [q.expr for q in dashboard_queries(dashboard, values=values, intervals=intervals)]


_LABEL_VALUES_RE = re.compile(r"^\s*label_values\((?P<sel>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def variable_queries(
    dashboard: Mapping[str, Any] | None = None,
    *,
    values: Mapping[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Query template variables -> (series selector, label) of their `label_values(sel, label)`,
    the selector with variables substituted (for /api/v1/series?match[]=sel)."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else (query or "")
        m = _LABEL_VALUES_RE.match(text)
        if not m:
            raise ValueError(f"variable {var['name']}: expected label_values(sel, label): {text!r}")
        out[var["name"]] = (substitute_variables(m.group("sel"), values), m.group("label"))
    return out


# ---------------------------------------------------------------------------------------------
# PromQL metric names
# ---------------------------------------------------------------------------------------------

_STRING_RE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER_RE = re.compile(r'__name__\s*=\s*"([^"]+)"')
_BRACES_RE = re.compile(r"\{[^{}]*\}")
_BRACKETS_RE = re.compile(r"\[[^\[\]]*\]")
_GROUPING_RE = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET_RE = re.compile(r"\boffset\s+-?[0-9][0-9a-z]*|@\s*(?:start\(\)|end\(\)|[0-9.]+)", re.I)
_TOKEN_RE = re.compile(r"(?P<num>\d[\w.]*)|(?P<id>[a-zA-Z_:][a-zA-Z0-9_:]*)")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
     "and", "or", "unless", "inf", "nan", "start", "end"}
)  # fmt: skip
_SELECTOR_RE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{(?P<matchers>[^{}]*)\}")
_MATCHER_LABEL_RE = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")


def metric_names(expr: str) -> set[str]:
    """The metric (series) names an expression selects; functions, aggregations, keywords,
    label names and durations are not metric names. Template variables should be substituted
    first (a `$var` is harmless inside a matcher string, but not outside one)."""
    names = set(_NAME_MATCHER_RE.findall(expr))
    text = _STRING_RE.sub('""', expr)
    text = _BRACES_RE.sub(" ", text)
    text = _BRACKETS_RE.sub(" ", text)
    text = _GROUPING_RE.sub(" ", text)
    text = _OFFSET_RE.sub(" ", text)
    for m in _TOKEN_RE.finditer(text):
        ident = m.group("id")
        if ident is None or ident.lower() in _KEYWORDS:
            continue
        if text[m.end() :].lstrip().startswith("("):
            continue  # function or aggregation operator
        names.add(ident)
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names in its matchers) for each `name{...}` selector in expr."""
    out = []
    for m in _SELECTOR_RE.finditer(expr):
        if m.group("name"):
            out.append((m.group("name"), set(_MATCHER_LABEL_RE.findall(m.group("matchers")))))
    return out


# ---------------------------------------------------------------------------------------------
# Prometheus configuration for a local Prometheus
# ---------------------------------------------------------------------------------------------


def local_prometheus_config(
    ports: Mapping[str, int],
    *,
    config_path: Path | str = PROMETHEUS_YML,
    host: str = "127.0.0.1",
    scrape_interval: str | None = None,
) -> str:
    """deploy/prometheus/prometheus.yml rewritten for a Prometheus running on this machine.

    `ports` maps scrape job names to local ports, e.g. {"pcm-selector": 18000, "prometheus":
    19090}: each such job scrapes `host:port` instead of its compose-network address (its
    target labels are kept). Jobs not in `ports` are dropped (their hosts resolve only on the
    compose network); a name in `ports` that is no job raises KeyError. rule_files become
    absolute paths, so the YAML works from any directory. `scrape_interval` (e.g. "1s")
    overrides the global scrape and evaluation intervals, for quick tests. Returns YAML text.
    """
    config_path = Path(config_path)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))

    jobs = {job["job_name"] for job in config.get("scrape_configs", [])}
    unknown = set(ports) - jobs
    if unknown:
        raise KeyError(f"no scrape job named {sorted(unknown)} in {config_path} (jobs: {jobs})")

    scrape_configs = []
    for job in config.get("scrape_configs", []):
        name = job["job_name"]
        if name not in ports:
            continue
        static = job.get("static_configs") or [{}]
        labels = {k: v for sc in static for k, v in (sc.get("labels") or {}).items()}
        entry: dict[str, Any] = {"targets": [f"{host}:{int(ports[name])}"]}
        if labels:
            entry["labels"] = labels
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        job["static_configs"] = [entry]
        scrape_configs.append(job)
    config["scrape_configs"] = scrape_configs

    config["rule_files"] = [
        str((config_path.parent / rule).resolve()) for rule in config.get("rule_files", [])
    ]

    if scrape_interval is not None:
        glob = config.setdefault("global", {})
        glob["scrape_interval"] = scrape_interval
        glob["evaluation_interval"] = scrape_interval
        glob["scrape_timeout"] = scrape_interval  # must not exceed the interval
        for job in scrape_configs:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)

    return yaml.safe_dump(config, sort_keys=False)
