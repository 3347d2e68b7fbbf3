#!/usr/bin/env bash
# The GPU check, in one script: under 5 minutes on one H200, nothing fetched from the network.
#
#   benchmarks/device_check.sh            # on a machine with a CUDA GPU and torch installed
#   benchmarks/device_check.sh --dry-run  # the same steps on the CPU at toy sizes (checks the script)
#
# 1. the test suite's `cuda`-marked tests (tests/test_cuda.py)
# 2. training-step throughput, bench-small and GPT-2-small shapes (d768 L12 H12 ctx1024): modulm fp32,
#    bf16, bf16 + torch.compile against the plain-PyTorch reference (fp32, and bf16 + compile) with the
#    same shapes in the same run; tokens/s and MFU against the dense bf16 peak (PEAK_TFLOPS, 989: H100/H200)
# 3. generation tokens/s with and without the KV cache, 1024 new tokens
# 4. the base recipe on the GPU (at most 2 minutes) and its held-out bits per byte
#
# modulm is used from this working tree: if its entry points are not installed, it is installed
# editable into a venv that sees the system's packages (--no-index: no network). The log goes to
# $OUT/device_check.log when $OUT is set (the device machine's result folder), else only stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
WORK=$(mktemp -d /tmp/modulm-device-check.XXXXXX)
LOG=${OUT:+$OUT/device_check.log}
export PYTHONUNBUFFERED=1 MODULM_CACHE_DIR=$WORK/cache
exec > >(tee ${LOG:+"$LOG"}) 2>&1
started=$SECONDS
status=0

section() { echo; echo "== $1 ($((SECONDS - started)) s in) =="; }
step() {  # step SECONDS COMMAND...: run with a time limit; a failure is reported and the next step runs
    local limit=$1; shift
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    if [[ $rc -ne 0 ]]; then echo "!! exit $rc (limit ${limit}s): $*"; status=1; fi
    return 0
}

section "environment"
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(not any(e.name == 'transformer' for e in m.entry_points(group='modulm')))" 2>/dev/null \
   || ! "$PY" -c "import modulm, sys, os; sys.exit(not modulm.__file__.startswith(os.getcwd()))" 2>/dev/null; then
    echo "installing this tree editable into $WORK/venv (no network: --no-index --no-deps)"
    "$PY" -m venv --system-site-packages "$WORK/venv" \
        && "$WORK/venv/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        && PY=$WORK/venv/bin/python || { echo "!! editable install failed"; exit 1; }
fi
"$PY" - <<'EOF'
import torch, modulm
from modulm.runtime import cpu_capability, resolve_precision
print(f"modulm {modulm.__version__} from {modulm.__file__}; torch {torch.__version__}")
print(f"CPU: {cpu_capability()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs; dtype auto -> {resolve_precision(torch.device('cuda'), 'auto').dtype}")
else:
    print("GPU: none (CUDA not available)")
EOF
DEVICE=cuda
if [[ $DRY -eq 1 ]]; then
    DEVICE=cpu
    echo "dry run: CPU, toy sizes"
elif ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "!! no CUDA device: run with --dry-run to check the script on a CPU"; exit 2
fi

section "1. cuda-marked tests"
step 150 "$PY" -m pytest -q -rs -m cuda tests/test_cuda.py

section "2. training step: modulm against the plain-PyTorch reference, same run"
if [[ $DRY -eq 1 ]]; then
    step 240 "$PY" benchmarks/bench_train_step.py --device cpu --configs tiny --variants ref,fp32,bf16 \
        --steps 1 --warmup 1 --batch-size 2
else
    step 240 "$PY" benchmarks/bench_train_step.py --device cuda --configs small,gpt2 \
        --variants ref,ref-bf16-compile,fp32,bf16,bf16-compile --steps 10 --warmup 3 --peak-tflops "$PEAK_TFLOPS"
fi

section "3. generation with and without the KV cache"
if [[ $DRY -eq 1 ]]; then
    step 180 "$PY" benchmarks/bench_generate.py --device cpu --context-length 64 --new-tokens 4 --repeats 1
else
    step 90 "$PY" benchmarks/bench_generate.py --device cuda --context-length 1040 --new-tokens 1024 --repeats 1
fi

section "4. the base recipe (held-out bits per byte)"
RUN=(recipes/base.toml "checkpointing.checkpoint_dir='$WORK/base'" "system.device='$DEVICE'")
[[ $DRY -eq 1 ]] && RUN+=(training.max_iterations=2 logging.eval_interval=0 logging.eval_iters=1
                          'logging.final_eval="sampled"' generation.max_tokens=8)
RUN+=(--overwrite)
step 150 "$PY" -m modulm run "${RUN[@]}" > "$WORK/base.log" 2>&1
grep -v -e " | Loss: " -e "^Sample" "$WORK/base.log" | tail -n 25
echo "base recipe: $(grep -o 'Training complete.*' "$WORK/base.log" | head -1)"
echo "base recipe held-out: $(grep -o 'Val loss: [^|]*| Perplexity: [^|]*| BPB: [0-9.]*' "$WORK/base.log" | tail -1)"

section "done in $((SECONDS - started)) s, status $status"
rm -rf "$WORK"
exit $status
