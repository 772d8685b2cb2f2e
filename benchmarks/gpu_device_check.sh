#!/usr/bin/env bash
# Everything issue 22 asks of a lent GPU machine, in ONE `device` call. Not run yet: no GPU was lent
# to the session that wrote it.
#
# 1. Here (the CPU machine), from the repository root, fetch the wheels the GPU machine lacks
#    (flwr, opacus, ...; see the header of /work/shared/tools/device-wheels.sh) plus pytest:
#      bash /work/shared/tools/device-wheels.sh pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
#    (In a git worktree `.git` is a file and that script's `mkdir -p .git/info` fails: .whl/ is
#    already git-ignored, so run its `pip download` line by hand, or fetch from the main checkout
#    and copy .whl/ over.)
# 2. One device call, carrying the wheels:
#      run(command="bash benchmarks/gpu_device_check.sh", carry=[".whl"], timeout_s=600)
#    STEPS picks a subset for a rerun, e.g. STEPS="tests dp" bash benchmarks/gpu_device_check.sh.
# 3. Everything lands in $OUT (JSON + one log per step + steps.txt): copy the JSON into
#    benchmarks/results/, then `python benchmarks/make_readme_table.py` for the performance page.
#
# Steps (about 8-9 minutes on an H100-class GPU, each capped by its own timeout):
#   env     nvidia-smi, torch/CUDA versions
#   tests   the GPU-marked tests (pytest -m gpu on the files that have them)
#   dp      dp_overhead.py --device cuda: event transformer and SetTransformer, fp32/tf32/bf16,
#           batches 512 and 2048, non-DP / book-keeping / Opacus hooks, interleaved, 5 reps;
#           then gpu_throughput.py --from-json checks issue 22's targets on it
#   deploy  a 3-site deployment of the event task (seed-size model) with device: cuda, and the same
#           run with device: cpu, per-round wall times (deployment_rounds.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fedcare-gpu-check}
STEPS=${STEPS:-"env tests dp deploy"}
mkdir -p "$OUT"
PY=${PY:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else
  echo "no .whl/ carried: using what is installed"
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: log to $OUT/NAME.log, one line to steps.txt
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name ($*)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
  tail -n 30 "$OUT/$name.log"
}

want() { [[ " $STEPS " == *" $1 "* ]]; }

if want env; then
  step env 60 bash -c "nvidia-smi; $PY -c 'import torch, flwr, opacus; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), flwr.__version__, opacus.__version__)'"
fi

if want tests; then
  mapfile -t gpu_files < <(grep -rl "pytest.mark.gpu" tests --include="*.py")
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA "${gpu_files[@]}"
fi

if want dp; then
  step dp_overhead 300 "$PY" benchmarks/dp_overhead.py --device cuda --precision fp32,tf32,bf16 \
    --event-batches 512,2048 --set-batches 512,2048 --modes non-dp,bookkeeping,hooks --out "$OUT/dp_overhead_cuda.json"
  step targets 60 "$PY" benchmarks/gpu_throughput.py --from-json "$OUT/dp_overhead_cuda.json" \
    --out "$OUT/gpu_throughput_cuda.json"
fi

if want deploy; then
  step deploy_cuda 200 "$PY" benchmarks/deployment_rounds.py --device cuda --model seed --rounds 2 \
    --sizes 1000,750,500 --batch-size 256 --out "$OUT/deployment_rounds_cuda.json"
  step deploy_cpu 200 "$PY" benchmarks/deployment_rounds.py --device cpu --model seed --rounds 2 \
    --sizes 1000,750,500 --batch-size 256 --out "$OUT/deployment_rounds_cpu.json"
fi

cat "$OUT/steps.txt"
