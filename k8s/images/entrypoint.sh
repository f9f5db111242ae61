#!/bin/sh
# Container entrypoint: `relais "$@"` (default `serve`), after pointing ONNX Runtime's
# TensorRT engine cache at a per-node subdirectory keyed by GPU model and library
# versions when TRT_CACHE_ROOT is set (gpu and jetson overlays mount a hostPath there).
set -eu
if [ -n "${TRT_CACHE_ROOT:-}" ] && [ -z "${RELAIS_RUNTIME_TRT_CACHE_DIR:-}" ]; then
    RELAIS_RUNTIME_TRT_CACHE_DIR="$(python3 /opt/relais/trt_cache_key.py "$TRT_CACHE_ROOT")"
    export RELAIS_RUNTIME_TRT_CACHE_DIR
    echo "TensorRT engine cache: $RELAIS_RUNTIME_TRT_CACHE_DIR" >&2
fi
exec relais "$@"
