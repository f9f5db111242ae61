"""The deployment as shipped: every kustomize overlay renders, passes the Kubernetes schemas
and the policy linters (tools/k8s_check.py), and says what the server needs (probes, drain,
security, resources, scaling on sessions); the Dockerfiles lint clean; the Grafana dashboard
only queries metrics the server exports.

The renderer and linters are installed by `tools/install.sh --test`; where one is missing the
test skips locally but fails under CI (CI=true), so CI never passes without running them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from relais.server.config import load_config
from relais.server.metrics import RelaisMetrics

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "tools" / "k8s_check.py")
k8s_check = importlib.util.module_from_spec(_spec)
sys.modules["k8s_check"] = k8s_check
_spec.loader.exec_module(k8s_check)


def _need(tool: str, found) -> None:
    if found is None:
        message = f"{tool} is not installed (bash tools/install.sh --test)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    _need("kubectl", k8s_check.kubectl())
    return {o: k8s_check.objects(k8s_check.render(o)) for o in k8s_check.OVERLAYS}


def _pod(docs):
    return k8s_check.find(docs, "Deployment", "relais")["spec"]["template"]


def _container(docs):
    return next(c for c in _pod(docs)["spec"]["containers"] if c["name"] == "relais")


def _server_config(docs, tmp_path):
    """The overlay's relais.yaml, loaded (and so validated) by the server's own loader."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("relais-config"))
    path = tmp_path / "relais.yaml"
    path.write_text(cm["data"]["relais.yaml"])
    return cm, load_config(path, env={})


@pytest.mark.parametrize("overlay", k8s_check.OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(rendered, overlay):
    pytest.importorskip("kubernetes_validate")
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Namespace", "Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}
    for version in (k8s_check.KUBERNETES_VERSION, "1.37.0"):
        report = k8s_check.validate(docs, version)
        assert not report.problems, report.problems


def test_schema_validation_catches_a_broken_manifest(rendered):
    pytest.importorskip("kubernetes_validate")
    deployment = json.loads(json.dumps(k8s_check.find(rendered["cpu"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"]["prot"] = 50051
    assert any("prot" in p for p in k8s_check.validate([deployment]).problems)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}, "endpoints": [{"path": "/metrics"}]}}
    assert len(k8s_check.validate([monitor]).problems) == 2


@pytest.mark.parametrize("overlay", k8s_check.OVERLAYS)
def test_pod_meets_the_server_lifecycle(rendered, overlay, tmp_path):
    docs = rendered[overlay]
    cm, config = _server_config(docs, tmp_path)
    pod, c = _pod(docs), _container(docs)
    # the config file is the one mounted and passed to `relais serve`
    assert c["args"][:3] == ["serve", "--config", "/etc/relais/relais.yaml"]
    volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/etc/relais"
    assert config.models.dir == "/opt/relais/models"
    # native gRPC probes on the server's port, a startup probe covering model warm-up
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config.server.port, "metrics": config.server.metrics_port, "web": config.server.web_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == config.server.port, probe
        assert c[probe]["grpc"].get("service", "") == ""  # overall health: NOT_SERVING while warming/draining
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # Kubernetes waits longer than the preStop pause plus the server's drain
    pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + config.server.drain_grace_s
    # non-root, read-only root, no privilege escalation, no capabilities, no API token
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    threads = next(e for e in c["env"] if e["name"] == "RELAIS_RUNTIME_INTRA_OP_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


@pytest.mark.parametrize("overlay", k8s_check.OVERLAYS)
def test_services_scaling_and_policies_select_the_pods(rendered, overlay, tmp_path):
    docs = rendered[overlay]
    _, config = _server_config(docs, tmp_path)
    labels = _pod(docs)["metadata"]["labels"]
    deployment = k8s_check.find(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    def selects(selector: dict) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    svc, headless = k8s_check.find(docs, "Service", "relais"), k8s_check.find(docs, "Service", "relais-headless")
    assert selects(svc["spec"]["selector"]) and selects(headless["spec"]["selector"])
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": config.server.port,
                                                                     "metrics": config.server.metrics_port,
                                                                     "web": config.server.web_port}
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(k8s_check.find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(k8s_check.find(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    monitor = k8s_check.find(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # the autoscaler follows live sessions per pod, below the admission limit
    hpa = k8s_check.find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "relais_sessions_active"
    target = metric["target"]["averageValue"]
    target_sessions = float(target[:-1]) / 1000 if str(target).endswith("m") else float(target)
    assert 0 < target_sessions < config.server.max_sessions
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert all(d["metadata"].get("namespace") == "relais" for d in docs if d["kind"] != "Namespace")


def test_overlays_target_their_node_types(rendered, tmp_path):
    cpu, gpu, jetson = (rendered[o] for o in k8s_check.OVERLAYS)
    assert _container(cpu)["image"].endswith("/relais-cpu:0.1.0")
    assert "nvidia.com/gpu" not in _container(cpu)["resources"]["limits"]
    assert _server_config(cpu, tmp_path)[1].runtime.providers == ("cpu",)
    for docs, image, arch in ((gpu, "relais-gpu", "amd64"), (jetson, "relais-jetson", "arm64")):
        pod, c = _pod(docs)["spec"], _container(docs)
        assert c["image"].endswith(f"/{image}:0.1.0")
        assert pod["runtimeClassName"] == "nvidia" and pod["nodeSelector"]["kubernetes.io/arch"] == arch
        assert _server_config(docs, tmp_path)[1].runtime.providers[0] == "tensorrt"
        # the per-node TensorRT cache: hostPath, mounted where the entrypoint's TRT_CACHE_ROOT points
        cache = next(v for v in pod["volumes"] if v["name"] == "trt-cache")
        root = next(e["value"] for e in c["env"] if e["name"] == "TRT_CACHE_ROOT")
        assert cache["hostPath"]["path"] == root
        assert any(m["mountPath"] == root for m in c["volumeMounts"])
        ns = k8s_check.find(docs, "Namespace")["metadata"]["labels"]
        assert ns["pod-security.kubernetes.io/warn"] == "restricted"
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert k8s_check.find(cpu, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def gib(quantity: str) -> float:
        return float(quantity[:-2]) if quantity.endswith("Gi") else float(quantity) / 2 ** 30

    assert gib(_container(jetson)["resources"]["limits"]["memory"]) < gib(_container(gpu)["resources"]["limits"]["memory"])


def test_checkov_has_no_unexplained_findings():
    _need("checkov", k8s_check.checkov())
    _need("kubectl", k8s_check.kubectl())
    report = k8s_check.check_all()
    assert not report.problems, "\n".join(report.problems)


def test_dockerfiles_lint_clean_and_run_relais_serve():
    _need("hadolint", k8s_check.hadolint())
    report = k8s_check.run_hadolint()
    assert not report.problems, "\n".join(report.problems)
    assert {p.name for p in k8s_check.DOCKERFILES} == {"cpu.Dockerfile", "gpu.Dockerfile", "jetson.Dockerfile"}
    for path in k8s_check.DOCKERFILES:
        text = path.read_text()
        assert 'ENTRYPOINT ["/opt/relais/entrypoint.sh"]' in text and 'CMD ["serve"]' in text
        assert re.search(r"^USER 10001", text, re.M)
        assert "relais models prepare --dir /models" in text and "COPY --from=models /models /opt/relais/models" in text
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
            for item in source.split():
                assert (ROOT / item.rstrip("/")).exists(), f"{path.name}: COPY {item} does not exist"
        assert (path.parent / f"{path.name}.dockerignore").is_file()
    assert os.access(ROOT / "k8s" / "images" / "entrypoint.sh", os.X_OK)


def test_trt_cache_key_separates_gpus_and_library_versions():
    spec = importlib.util.spec_from_file_location("trt_cache_key", ROOT / "k8s" / "images" / "trt_cache_key.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    key = mod.cache_key("NVIDIA L4", "8.9", "10.7.0", "1.22.0", "565.57.01")
    assert key == "nvidia-l4-sm89_trt10.7.0_ort1.22.0_drv565.57.01"
    others = {mod.cache_key("NVIDIA A100-SXM4-80GB", "8.0", "10.7.0", "1.22.0"),
              mod.cache_key("NVIDIA L4", "8.9", "10.8.0", "1.22.0"), mod.cache_key("NVIDIA L4", "8.9", "10.7.0", "1.23.0"),
              mod.cache_key("NVIDIA Jetson AGX Orin Developer Kit", "", "10.3.0", "1.20.0", "l4t36.4.0")}
    assert key not in others and len(others) == 4
    assert all(re.fullmatch(r"[a-z0-9._-]+", k) for k in others | {key})  # one safe path component each


def test_grafana_dashboard_queries_only_exported_metrics():
    dashboard = json.loads((ROOT / "k8s" / "grafana" / "relais-dashboard.json").read_text())
    m = RelaisMetrics()
    m.observe_stage("vad", 0.01)
    m.observe_scheduler_wait("vad", 0.001)
    m.set_execution_provider("cpu")
    m.errors_total.labels(code="INTERNAL").inc()
    exported = set()
    for family in m.registry.collect():
        exported |= {s.name for s in family.samples} | {family.name}
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(panels) >= 8 and len(exprs) >= len(panels)
    used = {name for e in exprs for name in re.findall(r"\b(relais_[a-z_]+)\b", e)}
    assert used and used <= exported, used - exported
    assert {"relais_sessions_active", "relais_first_audio_latency_seconds_bucket", "relais_real_time_factor_bucket",
            "relais_errors_total", "relais_stage_latency_seconds_bucket", "relais_compute_seconds_total",
            "relais_stream_lag_max_seconds", "relais_speech_backlog_max_seconds",
            "relais_uncommitted_speech_max_seconds", "relais_serving"} <= used
    assert any(v["name"] == "datasource" for v in dashboard["templating"]["list"])


# The part of Grafana's dashboard model (schemaVersion 39) this dashboard uses, strictly:
# a typo'd key, a panel off the 24-column grid or a target without a query fails.
_TARGET = {"type": "object", "required": ["refId", "expr"], "additionalProperties": False,
           "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1},
                          "legendFormat": {"type": "string"}, "instant": {"type": "boolean"}}}
_PANEL = {"type": "object", "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
          "additionalProperties": False,
          "properties": {"id": {"type": "integer"}, "type": {"enum": ["stat", "timeseries", "gauge", "table"]},
                         "title": {"type": "string", "minLength": 1}, "description": {"type": "string"},
                         "datasource": {"type": "object", "required": ["type", "uid"]},
                         "gridPos": {"type": "object", "required": ["x", "y", "w", "h"], "additionalProperties": False,
                                     "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 23},
                                                    "y": {"type": "integer", "minimum": 0},
                                                    "w": {"type": "integer", "minimum": 1, "maximum": 24},
                                                    "h": {"type": "integer", "minimum": 1}}},
                         "fieldConfig": {"type": "object", "required": ["defaults"]},
                         "options": {"type": "object"},
                         "targets": {"type": "array", "minItems": 1, "items": _TARGET}}}
DASHBOARD_SCHEMA = {
    "type": "object", "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {"title": {"type": "string"}, "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
                   "schemaVersion": {"type": "integer", "minimum": 30}, "refresh": {"type": "string"},
                   "templating": {"type": "object", "required": ["list"]},
                   "panels": {"type": "array", "minItems": 1, "items": _PANEL}}}


def test_grafana_dashboard_matches_its_schema_and_draws_the_slo():
    jsonschema = pytest.importorskip("jsonschema")
    dashboard = json.loads((ROOT / "k8s" / "grafana" / "relais-dashboard.json").read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    lag = next(p for p in panels if p["title"].startswith("Output lag"))
    steps = lag["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 2  # the SLO line, the same 2 s as the RelaisOutputLagAboveSLO alert
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][0]["gridPos"]["w"] = 30
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, DASHBOARD_SCHEMA)


def test_operations_doc_covers_each_node_type():
    text = (ROOT / "docs" / "operations.md").read_text()
    for needle in ("kubectl apply -k k8s/overlays/cpu", "kubectl apply -k k8s/overlays/gpu",
                   "kubectl apply -k k8s/overlays/jetson", "docker buildx build -f k8s/images/cpu.Dockerfile",
                   "prometheus-adapter", "relais_sessions_active", "headless", "drain_grace_s",
                   "terminationGracePeriodSeconds", "TRT_CACHE_ROOT", "python tools/k8s_check.py"):
        assert needle in text, needle
    for overlay in k8s_check.OVERLAYS:
        assert yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text())["resources"]
