#!/usr/bin/env bash
# The basin GPU check in one call, for a lent GPU machine without network:
#
#   bash bench/gpu_check.sh                # full check, 600 s budget
#   bash bench/gpu_check.sh --dry-run      # tiny sizes (also on a CPU)
#   GPU_CHECK_BUDGET=480 bash bench/gpu_check.sh --compile
#
# basin's code comes from this checkout (PYTHONPATH), so `pip install --no-deps -e .` is optional;
# torch and transformers must already be installed ($PYTHON picks the interpreter). The JSON and the log go to $OUT when it is set,
# else to the current folder. Extra arguments are passed to bench/gpu_check.py.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-.}"
mkdir -p "$out"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
budget="${GPU_CHECK_BUDGET:-600}"
"${PYTHON:-python}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# a hard stop 60 s after the script's own budget, in case a CUDA call hangs
timeout --kill-after=10 "$((${budget%.*} + 60))" \
    "${PYTHON:-python}" "$here/bench/gpu_check.py" --budget "$budget" --out "$out/gpu_check.json" "$@" 2>&1 \
    | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
