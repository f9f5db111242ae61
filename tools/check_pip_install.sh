#!/usr/bin/env bash
# The plain pip path, in a fresh venv, as the README gives it:
#
#   pip install torch==2.13.0            # CPU build; export-time only (TORCH_INDEX_URL, below)
#   pip install "relais[models]"         # here: the wheel of this checkout, with that extra
#   relais models prepare                # the VAD's ONNX file is read from the silero-vad
#   relais models verify                 #   wheel, which is never installed
#
# then checks that neither silero-vad, torchaudio, an nvidia-* package nor a CUDA torch
# got in, and prints times and sizes. Needs the package index (PyPI); ~5 min on 2 cores.
#
# Usage: bash tools/check_pip_install.sh [WORKDIR]   (default: a new folder under /tmp, removed
#        at the end unless KEEP=1). Env: PYTHON (python3); TORCH_INDEX_URL, e.g.
#        https://download.pytorch.org/whl/cpu where plain `pip install torch==2.13.0` takes a
#        CUDA build. Models and the VAD wheel go to WORKDIR/cache (XDG_CACHE_HOME), never ~/.cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
work=${1:-$(mktemp -d /tmp/relais-pip-check.XXXXXX)}
[[ -n "${1:-}" || "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
# pip keeps its own download cache (the check is about relais, not the network); everything
# of relais goes under WORKDIR
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}"
export XDG_CACHE_HOME="$work/cache"
unset RELAIS_MODELS_DIR PYTHONPATH VIRTUAL_ENV
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
step() { printf '== [%3d s] %s\n' "$((SECONDS - start))" "$*"; }

step "wheel of $root (copy of pyproject.toml, README.md, service/, export/)"
rm -rf "$work/src" "$work/dist" && mkdir -p "$work/src"
(cd "$root" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md service export) \
  | tar -xf - -C "$work/src"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)
"${pip[@]}" wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work/dist"/relais-*.whl)

step "pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}"
"${pip[@]}" install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
step "pip install \"relais[models]\" ($(basename "$wheel"))"
"${pip[@]}" install -q "$wheel[models]"
installed=$(du -sm "$work/venv" | cut -f1)

step "relais models prepare"
"$work/venv/bin/relais" models prepare
step "relais models verify"
"$work/venv/bin/relais" models verify

step "checks"
unwanted=$("${pip[@]}" list --format=freeze | grep -iE '^(silero-vad|torchaudio|nvidia-[^=]*)==' || true)
[[ -z "$unwanted" ]] || { echo "FAILED: installed although the pip path must not pull them: $unwanted"; exit 1; }
"$work/venv/bin/python" -c 'import torch, sys; sys.exit(f"FAILED: torch {torch.__version__} is a CUDA build" if torch.version.cuda else 0)'
ls "$XDG_CACHE_HOME"/relais/wheels/silero_vad-*.whl >/dev/null
models=$(du -sm "$XDG_CACHE_HOME/relais/models" | cut -f1)
echo "pip-only path OK in $((SECONDS - start)) s: venv ${installed} MB after install ($(du -sm "$work/venv" | cut -f1) MB now)," \
     "models ${models} MB in $XDG_CACHE_HOME/relais/models; torch $("$work/venv/bin/python" -c 'import torch; print(torch.__version__)')," \
     "no silero-vad/torchaudio/nvidia packages"
