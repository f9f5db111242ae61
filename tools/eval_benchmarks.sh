#!/usr/bin/env bash
# Re-run the `relais eval` benchmarks recorded in docs/benchmarks.md (in-process server, CPU).
# Usage: bash tools/eval_benchmarks.sh [MODELS_DIR]   (default: $RELAIS_MODELS_DIR or ~/.cache/relais/test-models)
set -euo pipefail
cd "$(dirname "$0")/.."
models="${1:-${RELAIS_MODELS_DIR:-$HOME/.cache/relais/test-models}}"
eval_dir="${RELAIS_EVAL_DIR:-../shared/eval}"
out=docs/benchmarks
# realtime (computation-aware) + concurrency sweep 1/2/4 + offline baseline + Prometheus comparison
relais eval --manifest "$eval_dir/fr_en_dev/manifest.tsv" --models "$models" --mode realtime \
  --concurrency 1,2,4 --lag-bound-s 3 --out "$out/eval-fr_en_dev-realtime"
# simulated (computation-unaware)
relais eval --manifest "$eval_dir/fr_en_dev/manifest.tsv" --models "$models" --mode simulated \
  --out "$out/eval-fr_en_dev-simulated"
# long-form: lag drift and server memory over time (no references: no BLEU)
relais eval --manifest "$eval_dir/fr_longform/manifest.tsv" --models "$models" --mode realtime \
  --longform --out "$out/eval-fr_longform"
