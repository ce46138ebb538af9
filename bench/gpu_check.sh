#!/usr/bin/env bash
# One unattended GPU check of the engine on random-weight models, for a machine without
# network access. Writes JSON and logs under $OUT (default ./gpu-check-out):
#
#   env.txt      GPU, driver, torch/CUDA versions
#   tiny.json    bench/generate.py on the tiny packs on CUDA: every method (none, faceid,
#                instantid, pulid, arc2face) x every speed mode, -n batching, device report.
#                Proves the CUDA/float16 code paths run; the timings of tiny models say little.
#   full.json    bench/generate.py --full-size on CUDA at 1024x1024: the compute of the real
#                SDXL, IdentityNet, FaceID Plus v2 and InstantID models (random weights), as
#                ratios against plain diffusers in the same run, with peak VRAM per mode.
#   compile.json the tiny packs again with --compile (graphs kept across method switches).
#
# Each stage has its own time limit so a slow stage cannot starve the others; a stage that
# fails leaves its log and the next one still runs.
#
#   bash bench/gpu_check.sh                 # with the project's dependencies installed
#   WHEELS=.whl bash bench/gpu_check.sh     # first installs the wheels in .whl into /tmp/site
set -u
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  nvidia-smi -L 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" - <<'EOF'
import torch, diffusers, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("diffusers", diffusers.__version__, "transformers", transformers.__version__)
EOF
} >"$OUT/env.txt" 2>&1

stage() {  # stage NAME SECONDS ARGS...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$PY" bench/generate.py "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  echo "stage $name: rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
}

MODELS="${MODELS_DIR:-/tmp/likeness-gpu-models}"
stage tiny "${TINY_SECONDS:-150}" --device "${DEVICE:-cuda}" --models-dir "$MODELS/tiny" \
  --methods none,faceid,instantid,pulid,arc2face --speeds quality,fast,turbo \
  --batch 4 --repeats 2 --device-report
stage full "${FULL_SECONDS:-300}" --full-size --device "${DEVICE:-cuda}" --models-dir "$MODELS" \
  --methods none,faceid,instantid --speeds quality,fast,turbo --steps 20 \
  --batch 2 --repeats 1 --no-step-costs --device-report
stage compile "${COMPILE_SECONDS:-90}" --device "${DEVICE:-cuda}" --models-dir "$MODELS/tiny" \
  --methods none,faceid --speeds quality,turbo --batch 0 --repeats 1 --no-step-costs --compile
nvidia-smi --query-gpu=memory.used --format=csv >>"$OUT/env.txt" 2>&1
exit 0
