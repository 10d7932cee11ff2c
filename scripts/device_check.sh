#!/usr/bin/env bash
# The GPU checks, one script (about 8 minutes on one H100, a guess: not yet run on one): the CUDA tests (GPU = CPU in
# float64 for training, the calculator and long range; compiled float32), energy + forces speed
# of the fast and the accurate model at 960 to 96 000 atoms, and two minutes of acac training.
# Prepare the checkout first where pip can download (bash scripts/device_prepare.sh), then run
# this there with .whl and .device carried. Records and logs go to $OUT (default runs/device) as
# device.tar.gz, and docs/benchmarks/ gets the speed and accuracy records.
# DEVICE=cpu SIZES=120 LARGE=960 MINUTES=0.3 tries the script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device} DEVICE=${DEVICE:-cuda} SIZES=${SIZES:-960 7680} LARGE=${LARGE:-96000} MINUTES=${MINUTES:-2}
mkdir -p "$OUT" runs/device-logs
LOGS=runs/device-logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 EQUIPOT_DATA=$PWD/.device/data
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, go on whatever happens
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$LOGS/summary.txt"
    tail -3 "$LOGS/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOGS/gpu.txt" 2>&1
python3 -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__, torch.cuda.get_device_name(0))" >> "$LOGS/gpu.txt" 2>&1
cat "$LOGS/gpu.txt"
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_device.py
python3 - <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from common import untrained_model
untrained_model("device", "fast", {"lmax": 1, "channels": 32, "message_lmax": 0, "sh_lmax": 3, "product_mixing": True})
untrained_model("device", "accurate", {"lmax": 2, "channels": 64, "product_mixing": True})
PY
step speed-fast 100 python3 benchmarks/speed.py runs/device/fast.safetensors --device "$DEVICE" \
    --sizes $SIZES $LARGE --repeats 20 --tag "gpu-fast"
step speed-accurate 100 python3 benchmarks/speed.py runs/device/accurate.safetensors --device "$DEVICE" \
    --sizes $SIZES --repeats 20 --tag "gpu-accurate"
step speed-fast-compiled 240 python3 benchmarks/speed.py runs/device/fast.safetensors --device "$DEVICE" --compile \
    --sizes ${SIZES##* } --repeats 20 --tag gpu-fast-compiled
# trained on the GPU, evaluated on eight CPU threads
step acac-train 240 python3 benchmarks/accuracy.py acac --device "$DEVICE" --threads 8 --budget-minutes "$MINUTES" \
    --channels 64 --lmax 2 --product-mixing --scheduler budget --forces-weight 1000 --out runs/acac-gpu
tar czf "$OUT/device.tar.gz" "$LOGS" docs/benchmarks/speed-gpu-* docs/benchmarks/acac-*-cuda* 2>/dev/null
cat "$LOGS/summary.txt"
