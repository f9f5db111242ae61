#!/usr/bin/env bash
# Pack what tools/gpu_check.sh needs on a GPU machine that can download nothing: an fp16 model
# set (Whisper base, the VAD, the voice), the fr_en_dev clips and the wheels a PyTorch CUDA image
# lacks (onnxruntime-gpu first), as one tar split into pieces small enough for one transfer each.
#
# Usage: bash tools/gpu_bundle.sh OUT_DIR [PIECE_MB]        (default 52: a 64 MiB transfer
#        with the ~10 MB working tree beside it). OUT_DIR=.dev keeps it inside the checkout,
#        where git ignores it and a transfer can carry one piece at a time (.dev/part.NN).
# Environment: GPU_PYTHON (the GPU machine's Python, default 3.12), RELAIS_EVAL_DIR.
#
# On the GPU machine, with every piece in one folder PIECES and this checkout as the current folder:
#   mkdir -p /root/gs && cat PIECES/part.* | tar -xf - -C /root/gs
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site /root/gs/whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/service:$PWD/export bash tools/gpu_check.sh /root/gs/models /root/gs/eval OUT
# docs/benchmarks.md, "On a GPU", has what the first such run found.
set -euo pipefail
out=$1 piece_mb=${2:-52}
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
eval_dir=${RELAIS_EVAL_DIR:-../shared/eval}
pyver=${GPU_PYTHON:-3.12}
stage=$out/stage
rm -rf "$stage" && mkdir -p "$stage/models" "$stage/eval" "$stage/whl"

# 1. The model set, exported at fp16, then only what the GPU run loads (about 220 MB).
full=$out/full-set
$py -m relais.cli models prepare --dir "$full" --precision fp16
mkdir -p "$stage/models/whisper-base"
cp "$full"/whisper-base/{encoder.fp16.onnx,decoder.fp16.onnx,tokenizer.json,mel_filters.npy} "$stage/models/whisper-base/"
cp -r "$full/silero-vad" "$full/piper-en_US-joe-medium" "$stage/models/"
[ -d "$full/samples" ] && cp -r "$full/samples" "$stage/models/"
$py - "$full/models.yaml" "$stage/models/models.yaml" <<'EOF'
import sys
import yaml
src, dst = sys.argv[1:]
manifest = yaml.safe_load(open(src))
manifest["models"] = {k: v for k, v in manifest["models"].items() if k != "whisper-tiny.en"}
whisper = manifest["models"]["whisper-base"]
whisper["files"] = {name: facts for name, facts in whisper["files"].items() if "fp32" not in name}
whisper["facts"]["precisions"] = ["fp16"]
yaml.safe_dump(manifest, open(dst, "w"), sort_keys=False)
EOF
RELAIS_MODELS_DIR="$stage/models" $py -m relais.cli models verify

# 2. The clips the eval replays.
cp -r "$eval_dir/fr_en_dev" "$stage/eval/"

# 3. Wheels: onnxruntime-gpu (its newest), and this checkout's versions of the rest.
pin() { $py -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print "=="$2}'; }
wheels=("onnxruntime-gpu")
for name in grpcio grpcio-health-checking grpcio-reflection protobuf soundfile soxr cffi pycparser piper-tts \
            websockets jiwer rapidfuzz whisper-normalizer indic-numtowords more-itertools; do
  wheels+=("$name$(pin "$name")")
done
platforms=()
for p in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux1 manylinux_2_5; do
  platforms+=(--platform "${p}_x86_64")
done
$py -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$stage/whl" "${wheels[@]}"

# 4. One tar, in pieces.
rm -f "$out"/part.*
tar -cf - -C "$stage" . | split -b "${piece_mb}M" -d -a 2 - "$out/part."
ls -l "$out"/part.* | awk '{s += $5} END {print NR " pieces, " int(s / 1048576) " MiB"}'
