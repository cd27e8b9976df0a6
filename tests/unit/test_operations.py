"""Operator-facing artefacts: Kubernetes manifests, the Grafana dashboard, the README's
settings table, structured logs."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from jobservice.config import Settings, mask_url
from jobservice.logs import JsonFormatter, log_transition
from jobservice.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CORE_KINDS = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
              "HorizontalPodAutoscaler"}


def manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                out[doc["kind"]] = doc
    return out


def test_every_core_manifest_validates_strictly_against_the_kubernetes_schema() -> None:
    found = manifests()
    assert CORE_KINDS <= set(found)
    for kind in CORE_KINDS:
        kubernetes_validate.validate(found[kind], "1.30.0", strict=True)
        kubernetes_validate.validate(found[kind], "1.37.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml",
                                                     "prometheus-adapter-rules.yaml"}
    assert listed == files


def test_deployment_probes_grace_and_security() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > Settings().shutdown_grace_s
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] and container["resources"]["requests"]
    env_from = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert env_from == {manifests()["ConfigMap"]["metadata"]["name"],
                        manifests()["Secret"]["metadata"]["name"]}


def test_service_monitor_and_autoscaler_point_at_what_exists() -> None:
    found = manifests()
    # ServiceMonitor is a CRD (no schema in Kubernetes itself): checked by its references
    monitor = found["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = found["Service"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in found["Service"]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    hpa = found["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    rules = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    [rule] = rules["rules"]["external"]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == rule["name"]["as"]
    assert _metric_names(rule["metricsQuery"]) <= exported_series()


def exported_series() -> set[str]:
    names = set()
    for family in ServiceMetrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                    "info": ["_info"], "gauge": [""]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    # exported only once a service runs (registered at start)
    return names | {"jobservice_db_statements_total"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bjobservice_[a-z_]+\b", expr))


def test_dashboard_queries_use_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used <= exported_series(), used - exported_series()


def test_readme_settings_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`JOBSERVICE_{name.upper()}`" in readme, name


def test_transition_log_line_is_json_with_the_job_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("jobservice.transitions")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_transition("0b0e", "alpha", "jobservice.noop", "RUNNING")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["msg"] == "job 0b0e RUNNING"
    assert (line["job_id"], line["tenant"], line["job_class"], line["status"]) == (
        "0b0e", "alpha", "jobservice.noop", "RUNNING")


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/jobs") == "postgresql://app:***@db:5432/jobs"
    assert "s3cret" not in mask_url("amqp://u:s3cret@mq/")
    assert mask_url("postgresql://postgres@127.0.0.1/x") == "postgresql://postgres@127.0.0.1/x"


def test_event_loop_setting_picks_uvloop_when_installed_unless_told_otherwise() -> None:
    import importlib.util

    installed = importlib.util.find_spec("uvloop") is not None
    assert Settings(event_loop="auto").use_uvloop() is installed
    assert Settings(event_loop="asyncio").use_uvloop() is False
    assert Settings(event_loop="uvloop").use_uvloop() is True
