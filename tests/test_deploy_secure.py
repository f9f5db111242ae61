"""k8s/components/secure through k8s/overlays/cpu-secure: TLS from a cert-manager Certificate, tokens
from a Secret, and the probes moved to the plaintext health port (native gRPC probes cannot do TLS).
The settings the Deployment gives the server are loaded by the server's own loader."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from relais.server.config import load_config

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = "cpu-secure"


def _k8s_check():
    if "k8s_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "tools" / "k8s_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["k8s_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["k8s_check"]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    k8s_check = _k8s_check()
    if k8s_check.kubectl() is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed (bash tools/install.sh --test)")
        pytest.skip("kubectl is not installed (bash tools/install.sh --test)")
    return k8s_check.objects(k8s_check.render(OVERLAY))


def _container(docs):
    deployment = _k8s_check().find(docs, "Deployment", "relais")
    return deployment["spec"]["template"], next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                                                if c["name"] == "relais")


def test_secure_overlay_configures_tls_tokens_and_probes(docs, tmp_path):
    k8s_check = _k8s_check()
    pod, c = _container(docs)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("relais-config"))
    (tmp_path / "relais.yaml").write_text(cm["data"]["relais.yaml"])
    config = load_config(tmp_path / "relais.yaml", env={k: v for k, v in env.items() if k.startswith("RELAIS_")})
    assert config.tls.enabled and config.auth.enabled and config.server.health_port == 50052
    # the probes use the plaintext health port; it is a container port but not a Service port nor open in the policy
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == config.server.health_port, probe
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == config.server.health_port
    assert "health" not in {p["name"] for p in k8s_check.find(docs, "Service", "relais")["spec"]["ports"]}
    policy_ports = {p["port"] for rule in k8s_check.find(docs, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
    assert "health" not in policy_ports and config.server.health_port not in policy_ports
    # the files the server reads are where the Secrets are mounted
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    certificate = k8s_check.find(docs, "Certificate", "relais-tls")
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert Path(config.tls.cert_file).parent == Path(config.tls.key_file).parent == Path(mounts["tls"])
    assert Path(config.auth.tokens_file).parent == Path(mounts["tokens"])
    assert volumes["tokens"]["secret"]["secretName"] == "relais-tokens"
    assert certificate["apiVersion"] == "cert-manager.io/v1" and certificate["metadata"]["namespace"] == "relais"
    assert certificate["spec"]["privateKey"]["rotationPolicy"] == "Always"
    assert "relais.relais.svc" in certificate["spec"]["dnsNames"]


def test_secure_overlay_validates_against_kubernetes_schemas(docs):
    pytest.importorskip("kubernetes_validate")
    k8s_check = _k8s_check()
    plain = [d for d in docs if d["kind"] != "Certificate"]  # a CRD: its fields are checked above
    for version in (k8s_check.KUBERNETES_VERSION, "1.37.0"):
        report = k8s_check.validate(plain, version)
        assert not report.problems, report.problems


def test_secure_overlay_has_no_unexplained_checkov_findings(docs, tmp_path):
    k8s_check = _k8s_check()
    if k8s_check.checkov() is None:
        if os.environ.get("CI"):
            pytest.fail("checkov is not installed (bash tools/install.sh --test)")
        pytest.skip("checkov is not installed (bash tools/install.sh --test)")
    path = tmp_path / f"{OVERLAY}.yaml"
    path.write_text(k8s_check.render(OVERLAY))
    report = k8s_check.run_checkov([path], "kubernetes")
    assert not report.problems, report.problems
