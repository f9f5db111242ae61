#!/usr/bin/env bash
# The GPU checks: the main job, the eval and the batching/capacity benchmarks on an NVIDIA GPU
# through onnxruntime-gpu's CUDA provider, each step bounded and logged, so that one failing
# step does not cost the others. Written for a short GPU lease: run it once, read OUT_DIR.
#
# Usage: bash tools/gpu_check.sh MODELS_DIR EVAL_DIR OUT_DIR   (tools/gpu_bundle.sh packs both dirs)
#   MODELS_DIR  a model set with the fp16 Whisper export (relais models prepare --precision fp16)
#   EVAL_DIR    the folder holding fr_en_dev/ (../shared/eval)
#   OUT_DIR     logs and eval results (created)
# Environment: RELAIS_RUNTIME_PROVIDERS (default cuda,cpu: this script checks the CUDA path;
# TensorRT needs its own libraries, docs/tensorrt.md), GPU_CHECK_STEPS (default: all of
# "info translate stages batch eval sweep"). Results: docs/benchmarks.md, "On a GPU".
set -u
models=$1 eval_dir=$2 out=$3
mkdir -p "$out"
cd "$(dirname "$0")/.."
export RELAIS_RUNTIME_PROVIDERS=${RELAIS_RUNTIME_PROVIDERS:-cuda,cpu}
export PYTHONUNBUFFERED=1 RELAIS_MODELS_DIR=$models RELAIS_EVAL_DIR=$eval_dir
steps=${GPU_CHECK_STEPS:-info translate stages batch eval sweep}
manifest=$eval_dir/fr_en_dev/manifest.tsv
py=${PYTHON:-python3}

step() {  # step NAME LIMIT_S CMD...: run CMD bounded, its output to OUT_DIR/NAME.log
  local name=$1 limit=$2 t0 rc
  shift 2
  case " $steps " in *" $name "*) ;; *) return 0 ;; esac
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "step $name: rc $rc, $(($(date +%s) - t0)) s" | tee -a "$out/steps.txt"
  tail -n 25 "$out/$name.log"
}

# CUDA libraries from pip's nvidia-* packages of another environment (a PyTorch image): on the loader's path.
nv=$($py -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(f) for d in nvidia.__path__
     for f in glob.glob(d + "/**/lib*.so*", recursive=True)})))' 2>/dev/null) && [ -n "$nv" ] &&
  export LD_LIBRARY_PATH=$nv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step info 60 bash -c "nvidia-smi; nproc; $py -c '
import onnxruntime as o
from relais.runtime.ort import RuntimeConfig, create_session
print(o.__version__, o.get_available_providers())
s = create_session(\"$models/silero-vad/silero_vad.onnx\", RuntimeConfig(providers=(\"cuda\", \"cpu\")))
print(\"silero-vad on\", s.provider, s.session.get_providers())'"

# The main job: a French clip in, English speech out, at real time, on the GPU.
sample=service/relais/data/samples/fr_fleurs_1857.wav
step translate 90 $py -m relais.cli -v translate "$sample" --from fr --to en -o "$out/translate/fr_fleurs_1857.en.wav"

# Where a stream's compute goes, and model-call throughput with batch 1..8.
step batch 90 $py tools/bench_batch.py --models-dir "$models" --precision fp16 --runs 5 --out "$out/batch.md"
step stages 90 $py tools/profile_stages.py --manifest "$manifest" --models "$models"

# Quality and latency at real time, one stream, with the offline baseline and ASR-BLEU.
step eval 200 $py -m relais.cli eval --manifest "$manifest" --models "$models" --mode realtime --out "$out/eval"

# Many streams: the clips four times over, 8 then 24 at once (the first lease's 48-stream level
# did not finish within the step: the eval writes its results only at the end). The CPU defaults
# (8 sessions, a burst of starts costing 0.4 of the machine each) are for 2 cores; here the
# sessions and the batch are raised and refused streams back off and retry.
rep=$out/manifest-x4.tsv
{ head -n 1 "$manifest"; for i in 1 2 3 4; do tail -n +2 "$manifest" | awk -v i=$i -v d="$eval_dir/fr_en_dev" \
    'BEGIN{FS=OFS="\t"} {$1=$1"_"i; if ($2 !~ /^\//) $2=d"/"$2; print}'; done; } >"$rep"
step sweep 240 env RELAIS_SERVER_MAX_SESSIONS=64 RELAIS_LOAD_MAX_BATCH=16 RELAIS_LOAD_NEW_STREAM_COST=0.05 \
  $py -m relais.cli eval --manifest "$rep" --models "$models" --mode realtime --concurrency 8,24 \
  --lag-bound-s 2 --retry-refused-s 1 --no-offline --no-asr --out "$out/sweep"

exit 0
