#!/usr/bin/env bash
# The device check: one command for a short GPU window (an H100 or H200, ~15 minutes).
#
#   bench/device_check.sh                  # on CUDA: the test suite natively, then the benchmarks (< 6 minutes)
#   bench/device_check.sh --quick          # the same with a small grid
#   bench/device_check.sh --dry-run        # on a CPU: no test suite, tiny sizes, the kernel under TRITON_INTERPRET=1
#   bench/device_check.sh --skip-tests     # benchmarks only
#   bench/device_check.sh --baseline-kernel OLD      # also time an older copy of triton_kernels/ (a folder, or the
#                                                    # single verify.py of commits before the split)
#   bench/device_check.sh --sweep          # then the launch-configuration sweep (bench/sweep_config.py, ~1 minute)
# Other options (--budget-seconds, --providers, --skip-launches, --skip-warped, --skip-methods, ...) go to
# bench/bench_verify_gpu.py.
#
# Installs nothing. Runs the working tree whether or not specsampler is installed: a symlink tree maps src/specsampler
# and triton_kernels/ (as specsampler.triton_kernels, like the installed package) and goes first on PYTHONPATH.
# The test suite runs without -x (every failure shows), with -n 8 when pytest-xdist imports; then the benchmarks.
# Then the vLLM plugin's verification step (bench/bench_vllm_gpu.py: vLLM's flattened [num_tokens, V] float32 logits,
# B = 1, 8, 32, 64, K = 4 uniform and ragged, V = 151936, greedy and T = 0.8, backend triton, against vLLM's Triton
# rejection_sample when vLLM imports; VLLM_GPU_SECONDS, default 45).
# Then end-to-end generation (bench/bench_generate.py --preset gpu: a 0.85B Llama in bf16 with an early-exit draft,
# B = 1, 8, 32, 64, K = 4 constant and the "cost" schedule, against transformers plain and assisted; E2E_SECONDS of
# the whole, default 120; --skip-e2e), and the same models with a draft that agrees about 30% of the time
# (--late-scale 0.09: 27-35% measured in float32 on a CPU for 0.08-0.10) under the heuristic and the "cost" draft
# lengths, B = 1 and 8, against plain generate (E2E_LOW_SECONDS, 50); then token trees (3,2,1,1) and (2,1,1,1), in
# full and pruned (draft_tree_min_prob = TREE_MIN_PROB, default 0.01), beside the chain K = 4, greedy, B = 1 and 8
# (E2E_TREE_SECONDS, 60).
# Results go to $OUT (default bench/out): verify_<gpu>.csv, launches_<gpu>.csv, warped_<gpu>.csv, methods_<gpu>.csv
# (block against token verification, log-probabilities, verify_tree against a chain), verify_<gpu>.png,
# vllm_verify_<gpu>.csv, vllm_verify.log,
# resources_<gpu>.csv, generate_<gpu>.csv, generate_low_<gpu>.csv, generate_tree_<gpu>.csv, tests.log, bench.log,
# generate.log, generate_low.log, generate_tree.log, sweep_<gpu>.csv (--sweep).
# Environment: PYTHON (default python3), DEVICE_CHECK_SECONDS (whole run, default 330), TEST_TIMEOUT (default 150),
# E2E_SECONDS (default 120), E2E_LOW_SECONDS (default 50), E2E_TREE_SECONDS (default 60), TREE_MIN_PROB (0.01),
# VLLM_GPU_SECONDS (default 45),
# DEVICE_CHECK_WHEELS (a folder with a flashinfer*.whl to unpack, default bench/wheels).
# Exit status: 0 if the tests and the benchmarks passed, 1 otherwise (the benchmarks run even if the tests fail).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL=${DEVICE_CHECK_SECONDS:-330}
TEST_TIMEOUT=${TEST_TIMEOUT:-150}
OUT=${OUT:-$ROOT/bench/out}
export OUT
mkdir -p "$OUT"
START=$(date +%s)

DRY=0
TESTS=1
SWEEP=0
E2E=1
E2E_SECONDS=${E2E_SECONDS:-120}
E2E_LOW_SECONDS=${E2E_LOW_SECONDS:-50}
E2E_TREE_SECONDS=${E2E_TREE_SECONDS:-60}
VLLM_GPU_SECONDS=${VLLM_GPU_SECONDS:-45}
BENCH_ARGS=()
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # the script cd's to the root below
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; TESTS=0; BENCH_ARGS+=("$1") ;;
    --skip-tests) TESTS=0 ;;
    --sweep) SWEEP=1 ;;
    --skip-e2e) E2E=0 ;;
    --baseline-kernel)
      [ $# -ge 2 ] || { echo "--baseline-kernel needs a path"; exit 2; }
      shift; BENCH_ARGS+=(--baseline-kernel "$(absolute "$1")") ;;
    --baseline-kernel=*) BENCH_ARGS+=(--baseline-kernel "$(absolute "${1#*=}")") ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) BENCH_ARGS+=("$1") ;;
  esac
  shift
done

# The working tree as an importable package, installed or not.
TREE=$(mktemp -d "${TMPDIR:-/tmp}/specsampler_tree.XXXXXX")
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/specsampler"
for f in "$ROOT"/src/specsampler/*; do
  [ "$(basename "$f")" = __pycache__ ] || ln -s "$f" "$TREE/specsampler/"
done
ln -s "$ROOT/triton_kernels" "$TREE/specsampler/triton_kernels"
export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
# FlashInfer from a wheel brought along (DEVICE_CHECK_WHEELS, default bench/wheels): unpacked to the temporary
# folder and put last on PYTHONPATH when flashinfer does not import already; nothing is installed.
for whl in "${DEVICE_CHECK_WHEELS:-$ROOT/bench/wheels}"/flashinfer*.whl; do
  [ -e "$whl" ] || break
  "$PY" -c "import flashinfer" >/dev/null 2>&1 && break
  mkdir -p "$TREE/wheels" && "$PY" -m zipfile -e "$whl" "$TREE/wheels" && \
    export PYTHONPATH="$PYTHONPATH:$TREE/wheels" && echo "flashinfer: unpacked $(basename "$whl") (not installed)"
  break
done
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
fi
cd "$ROOT" || exit 1

echo "== device check: $(date -u +%FT%TZ), dry run $DRY, out $OUT"
"$PY" - <<'EOF'
import torch, triton
import specsampler, specsampler.triton_kernels
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python ok: torch {torch.__version__}, triton {triton.__version__}, CUDA device: {cuda}")
print(f"specsampler {specsampler.__version__} from {specsampler.__file__}")
EOF
[ $? = 0 ] || { echo "FAILED: the environment does not import (see above)"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv

TEST_RC=0
if [ "$TESTS" = 1 ]; then
  echo "== 1. test suite on $("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")') (timeout ${TEST_TIMEOUT}s)"
  # (tests/test_compile_offline.py is left out: it compiles for a GPU on machines without one; here every test compiles)
  # No -x: one failure must not hide the others.
  XDIST=()
  "$PY" -c "import xdist" >/dev/null 2>&1 && XDIST=(-n 8)
  DEVICE_CHECK_RUNNING=1 timeout -s INT -k 10 "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider \
    ${XDIST[@]+"${XDIST[@]}"} tests --ignore=tests/test_compile_offline.py 2>&1 | tee "$OUT/tests.log"
  TEST_RC=${PIPESTATUS[0]}
  if [ "$TEST_RC" = 0 ]; then echo "tests: passed"; else echo "TESTS FAILED (status $TEST_RC; 124/130: timed out); going on to the benchmarks"; fi
fi

ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( TOTAL - ELAPSED - 45 ))  # leave time for the plot, the table and the last case
# (the dry run's end-to-end steps take seconds: its benchmarks keep the whole budget)
[ "$E2E" = 1 ] && [ "$DRY" = 0 ] && BUDGET=$(( BUDGET - E2E_SECONDS - E2E_LOW_SECONDS - E2E_TREE_SECONDS ))
[ "$DRY" = 0 ] && BUDGET=$(( BUDGET - VLLM_GPU_SECONDS ))
[ "$BUDGET" -ge 60 ] || BUDGET=60
echo "== 2-4. copy ceiling and benchmarks (budget ${BUDGET}s)"
timeout -s INT -k 20 $(( BUDGET + 60 )) "$PY" bench/bench_verify_gpu.py --budget-seconds "$BUDGET" "${BENCH_ARGS[@]}" \
  2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}

# The vLLM plugin's verification call (in a dry run: B = 1, 2, V = 300 on the CPU, the kernel interpreted).
VLLM_ARGS=(--budget-seconds $(( VLLM_GPU_SECONDS - 20 )))
[ "$DRY" = 1 ] && VLLM_ARGS=(--dry-run)
echo "== 4b. the vLLM plugin's verification step against vLLM's rejection_sample (budget ${VLLM_GPU_SECONDS}s)"
timeout -s INT -k 10 "$VLLM_GPU_SECONDS" "$PY" bench/bench_vllm_gpu.py "${VLLM_ARGS[@]}" --out "$OUT" 2>&1 | \
  tee "$OUT/vllm_verify.log"
[ "${PIPESTATUS[0]}" = 0 ] || BENCH_RC=1

# One end-to-end step: e2e NAME SECONDS "B ..." TITLE OPTION... runs bench/bench_generate.py for at most SECONDS with
# the gpu preset (at those batch sizes; the preset's own when empty) or, in a dry run, tiny models on the CPU at
# B = 1 and 2 (the script runs, nothing is measured); it writes NAME_<gpu>.csv and NAME.log.
E2E_RC=0
e2e() {
  local name=$1 seconds=$2 batches=$3 title=$4
  shift 4
  local sizes=(--preset gpu --budget-seconds $(( seconds - 25 )))
  # shellcheck disable=SC2206  # (the batch sizes split into words)
  [ -n "$batches" ] && sizes+=(--batch $batches)
  [ "$DRY" = 1 ] && sizes=(--batch 1 2 --new-tokens 4 --layers 2 --hidden 64 --heads 2 --vocab 256 --repeats 1)
  echo "== $title (budget ${seconds}s)"
  TRITON_INTERPRET=0 timeout -s INT -k 10 "$seconds" "$PY" bench/bench_generate.py "${sizes[@]}" "$@" \
    --csv "$OUT/${name}_${GPU_NAME}.csv" 2>&1 | tee "$OUT/$name.log"
  [ "${PIPESTATUS[0]}" = 0 ] || E2E_RC=1
}
if [ "$E2E" = 1 ]; then
  GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name().lower().replace(" ", "_") if torch.cuda.is_available() else "cpu")')
  e2e generate "$E2E_SECONDS" "" "5. end-to-end generation" --profile --schedule constant cost
  e2e generate_low "$E2E_LOW_SECONDS" "1 8" \
    "5b. end-to-end generation, a draft that agrees ~30% of the time, adaptive K" \
    --late-scale 0.09 --schedule heuristic cost --assisted-max-batch 0
  e2e generate_tree "$E2E_TREE_SECONDS" "1 8" "5c. end-to-end generation, token trees against the chain, greedy" \
    --draft-tree 3,2,1,1 2,1,1,1 --draft-tree-min-prob "${TREE_MIN_PROB:-0.01}" --assisted-max-batch 0
fi

if [ "$SWEEP" = 1 ] && [ "$DRY" = 0 ]; then
  echo "== 6. launch-configuration sweep"
  timeout -s INT -k 10 180 "$PY" bench/sweep_config.py --rep-ms 10 --out "$OUT" 2>&1 | tee "$OUT/sweep.log"
fi

echo "== done in $(( $(date +%s) - START ))s: tests status $TEST_RC, benchmarks status $BENCH_RC, end to end status" \
  "$E2E_RC; results in $OUT"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$E2E_RC" = 0 ]
