#!/usr/bin/env bash
# GPU checks for issue #12 in one run, for the device machine (one H200, 15 minutes of device time per session):
# installs what that machine lacks from wheels carried in .whl/, then runs the inference and training benchmarks at
# 1203 classes (fp32 and bf16, batch 8), a short DDP-free training of the LVIS rehearsal's model, the
# post-processing benchmark, and the evaluation benchmark, writing JSON + Markdown to $OUT (default benchmarks/results/gpu_check). Without CUDA it runs the same scripts on the CPU in quick mode,
# which is how it is tested here.
#
#   bash benchmarks/gpu_check.sh              # on the device machine: carry .whl, OUT set by the device tool
#
# Wheels (here, once): python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#   --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#   pycocotools hotcoco lvis
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; QUICK=(); BATCH=8; EVAL=(--sizes 2000 19809 --rounds 1); TRAIN=(--batch-size 8 --rounds 2)
else
  DEVICE=cpu; QUICK=(--quick); BATCH=1; EVAL=(--quick --rounds 1); TRAIN=(--quick --rounds 1)
  echo "gpu_check: no CUDA device, running the CPU fallback (quick modes)"
fi

python3 benchmarks/inference_throughput.py --device "$DEVICE" --dtype fp32 --batch-size "$BATCH" --rounds 3 \
  "${QUICK[@]}" --out-dir "$OUT" 2>&1 | tee "$OUT/inference_fp32.log"
if [ "$DEVICE" = cuda ]; then
  python3 benchmarks/inference_throughput.py --device cuda --dtype bf16 --batch-size "$BATCH" --rounds 3 \
    --out-dir "$OUT" 2>&1 | tee "$OUT/inference_bf16.log"
fi
for DTYPE in fp32 bf16; do
  if [ "$DTYPE" = fp32 ] || [ "$DEVICE" = cuda ]; then
    python3 benchmarks/train_throughput.py --data lvis --device "$DEVICE" --dtype "$DTYPE" "${TRAIN[@]}" \
      --out-dir "$OUT" 2>&1 | tee "$OUT/train_$DTYPE.log"
  fi
done
python3 benchmarks/rehearsal_training.py --device "$DEVICE" "${QUICK[@]}" --out-dir "$OUT" 2>&1 \
  | tee "$OUT/rehearsal_training.log"
python3 benchmarks/postprocess_speed.py --device "$DEVICE" --rounds 3 --out-dir "$OUT" 2>&1 | tee "$OUT/postprocess.log"
python3 benchmarks/eval_speed.py "${EVAL[@]}" --out-dir "$OUT" 2>&1 | tee "$OUT/eval.log"
echo "gpu_check: done -> $OUT"
