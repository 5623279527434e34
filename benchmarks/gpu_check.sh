#!/usr/bin/env bash
# The first run of minidl on a GPU machine, in one script (docs/GPU.md says what it checks and
# what was checked without a GPU):
#
#   1. minidl.cuda.self_test(): the device, NVRTC and the CUDA headers (one .cu compiled and run),
#      cuBLAS (a 2-D and a strided-batched product);
#   2. MINIDL_REQUIRE_GPU=1 python -m pytest -m gpu: every GPU test, none allowed to skip;
#   3. both examples with --device cuda --max-steps 20, into a temporary folder;
#   4. benchmarks/bench.py --device cuda --batch128 (against PyTorch where it is installed), each
#      side's TF32 setting stated (off unless TF32=1 in the environment: --tf32 on both sides).
#
# Each step has a time limit; together they end within 8 minutes on one H100/H200. A summary
# follows, and the exit status is the number of steps that failed. On a machine without a
# usable GPU it stops at once, saying why.
#
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
work=$(mktemp -d "${TMPDIR:-/tmp}/minidl-gpu-check-XXXXXX")
summary=()
failed=0

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to a log
    local name=$1 limit=$2 start status verdict
    shift 2
    echo "== $name (at most ${limit}s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
    status=$?
    tail -n 25 "$work/$name.log"
    case $status in
        0) verdict=ok ;;
        124 | 137) verdict="TIMEOUT after ${limit}s" ;;
        *) verdict="FAILED (exit $status)" ;;
    esac
    [ "$status" -eq 0 ] || failed=$((failed + 1))
    summary+=("$(printf '%-9s %-24s %4ss  log: %s' "$name" "$verdict" "$(($(date +%s) - start))" "$work/$name.log")")
}

echo "minidl GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); logs in $work"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! reason=$("$python" -c "import minidl; print(minidl.backend.cuda_status() or '')" 2>&1) || [ -n "$reason" ]; then
    echo "gpu_check: no usable GPU, nothing run: $reason"
    exit 1
fi

tf32=()
[ "${TF32:-0}" = 1 ] && tf32=(--tf32)
step self-test 45 "$python" -c "import sys, minidl; sys.exit(0 if minidl.cuda.self_test() else 1)"
step gpu-tests 170 env MINIDL_REQUIRE_GPU=1 "$python" -m pytest -m gpu -q -p no:cacheprovider
step alexnet 70 "$python" examples/alexnet_imagenet.py --device cuda --max-steps 20 \
    --out "$work/alexnet" --overwrite --demo-dir "$work/alexnet-demo"
step euronet 50 "$python" examples/euronet_eurosat.py --device cuda --max-steps 20 \
    --out "$work/euronet" --overwrite --demo-dir "$work/euronet-demo"
step bench 130 "$python" benchmarks/bench.py --device cuda --batch128 --repeats 5 ${tf32[@]+"${tf32[@]}"}

echo
echo "== summary (${failed} failed)"
printf '%s\n' "${summary[@]}"
grep -E "passed|failed|error" "$work/gpu-tests.log" | tail -n 1
grep -E "TF32|^\| |minidl / " "$work/bench.log" 2>/dev/null
exit "$failed"
