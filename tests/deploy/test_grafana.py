"""deploy/grafana: every panel's PromQL names only metrics our components export (with labels they
have), the panels the issue asks for are there per model and version, and the provisioning files
point at the dashboard and at the datasource it uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import _promql
from ._exported import TARGET_LABELS, exported
from ._promtool import REPO, run_promtool

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "autoai.json"


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from panel.get("panels", ())  # a collapsed row carries its panels
        if panel["type"] != "row":
            yield panel


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def _samples() -> dict[str, frozenset[str]]:
    """Sample name -> label names, over every component; plus Prometheus' own ``up``."""
    out = {name: labels for c in exported().values() for name, (_, labels) in c.items()}
    out["up"] = frozenset()
    return out


# ------------------------------------------------------------------------- the PromQL reader


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        ("up", {"up"}, set()),
        ('sum by (le) (rate(x_bucket{a="1", b=~"$v"}[$__rate_interval]))', {"x_bucket"}, {"le"}),
        (
            "sum(rate(x_total[5m])) by (model) / on (model) group_left y",
            {"x_total", "y"},
            {"model"},
        ),
        (
            'histogram_quantile(0.99, sum without (pod) (rate(h_bucket{le!="+Inf"}[1h:5m])))',
            {"h_bucket"},
            {"pod"},
        ),
        (
            "a offset 1h30m and b unless c or bool_metric > bool 1e3",
            {"a", "b", "c", "bool_metric"},
            set(),
        ),
        ('count(x{s="sum by (q) (y)"} == 0)', {"x"}, set()),
        ("max_over_time(g[10m] @ end()) atan2 -Inf", {"g"}, set()),
    ],
)
def test_the_promql_reader(expr: str, metrics: set[str], grouping: set[str]) -> None:
    usage = _promql.read(expr)
    assert (usage.metrics, usage.grouping) == (metrics, grouping)


def test_the_promql_reader_names_labels_and_refuses_what_it_cannot_read() -> None:
    (selector,) = _promql.read('rate(m{model=~"$model", outcome!="ok"}[1m])').selectors
    assert selector == _promql.Selector("m", frozenset({"model", "outcome"}))
    usage, label = _promql.template_metric('label_values(m{job=~"$job"}, version)')
    assert usage.metrics == {"m"} and label == "version"
    with pytest.raises(ValueError, match="without a metric name"):
        _promql.read('{__name__=~"eas_.*"}')
    with pytest.raises(ValueError, match="cannot read"):
        _promql.read("rate(x[5m]) # comment")


# ------------------------------------------------------------------------------ the dashboard


def test_every_metric_the_dashboard_names_is_exported() -> None:
    samples = _samples()
    dashboard = _dashboard()
    queries = list(_exprs(dashboard))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            usage, label = _promql.template_metric(variable["definition"])
            queries.append((f"${variable['name']}", variable["definition"]))
            for name in usage.metrics:
                assert label in samples[name] | TARGET_LABELS, (variable["name"], name, label)
    for title, query in queries:
        usage = (
            _promql.template_metric(query)[0]
            if query.startswith("label_values")
            else _promql.read(query)
        )
        assert usage.selectors, f"{title}: no metric in {query!r}"
        for selector in usage.selectors:
            assert selector.name in samples, (
                f"{title}: {selector.name} is exported by none of our components ({query})"
            )
            labels = samples[selector.name] | TARGET_LABELS
            assert selector.labels <= labels, (
                f"{title}: {selector.name} has no {selector.labels - labels}"
            )
        known = frozenset().union(*(samples[n] for n in usage.metrics)) | TARGET_LABELS
        assert usage.grouping <= known, f"{title}: grouping by {usage.grouping - known} ({query})"


def test_per_model_and_version() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("model", "version"):
        assert variables[name]["definition"].startswith("label_values("), name
        assert _promql.template_metric(variables[name]["definition"])[1] == name
        assert variables[name]["multi"] and variables[name]["includeAll"]
    samples = _samples()
    for title, expr in _exprs(dashboard):
        for selector in _promql.read(expr).selectors:
            if "model" in samples[selector.name] or selector.name == "up":
                assert {"model", "version"} <= selector.labels, f"{title}: {expr}"
                assert '$model"' in expr and '$version"' in expr, f"{title}: {expr}"


def test_the_panels_the_issue_asks_for() -> None:
    dashboard = _dashboard()
    queries = [(title, expr, _promql.read(expr)) for title, expr in _exprs(dashboard)]

    def panels(metric: str, by: str | None = None) -> set[str]:
        """Titles of panels with a query of ``metric`` (grouped by ``by``)."""
        return {
            title
            for title, _, usage in queries
            if metric in usage.metrics and (by is None or by in usage.grouping)
        }

    wanted = {
        "QPS, client and server side": panels("autoai_client_requests_total")
        & panels("eas_requests_total"),
        "RT client side": panels("autoai_client_request_duration_seconds_bucket"),
        "RT server side": panels("eas_request_duration_seconds_bucket"),
        "queue vs compute time": panels("eas_queue_duration_seconds_sum")
        & panels("eas_compute_duration_seconds_sum"),
        "batch size distribution": panels("eas_batch_size_bucket", by="le"),
        "server errors by outcome": panels("eas_requests_total", by="outcome"),
        "client errors by outcome": panels("autoai_client_requests_total", by="outcome"),
        "fallbacks by reason": panels("autoai_client_fallbacks_total", by="reason"),
        "shadow agreement": panels("autoai_client_shadow_agreement_bucket"),
        "instances up": panels("up"),
        "instances by state": panels("autoai_instances", by="state"),
    }
    assert [what for what, found in wanted.items() if not found] == [], wanted
    for title, expr, usage in queries:
        if "histogram_quantile" in expr:
            assert "le" in usage.grouping, f"{title}: a quantile without `by (le)`"
    for title in wanted["RT client side"] | wanted["RT server side"]:
        exprs = [e for t, e, _ in queries if t == title]
        assert any("histogram_quantile(0.5," in e for e in exprs), title
        assert any("histogram_quantile(0.99," in e for e in exprs), title
    heatmaps = [p for p in _panels(dashboard) if p["type"] == "heatmap"]
    assert [p["title"] for p in heatmaps] == ["Batch size distribution"]
    assert [t["format"] for p in heatmaps for t in p["targets"]] == ["heatmap"]


def test_layout_ids_and_datasources() -> None:
    dashboard = _dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panel_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Every query through Prometheus' own parser: as recording rules for `promtool check rules`,
    with Grafana's variables given values."""
    values = {"$__rate_interval": "1m", "$__interval": "1m"}
    rules = []
    for i, (title, expr) in enumerate(_exprs(_dashboard())):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"panel": title}})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


# ------------------------------------------------------------------------------ provisioning


def test_provisioning_points_at_the_dashboard_and_its_datasource() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/autoai.yml").read_text())
    (provider,) = providers["providers"]
    assert providers["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"].endswith("/dashboards/autoai")
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    dashboard = _dashboard()
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["name"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == source["uid"]
    assert dashboard["uid"] and not dashboard.get("id")  # provisioned: Grafana assigns the id
