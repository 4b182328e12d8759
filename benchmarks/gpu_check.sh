#!/usr/bin/env bash
# One-shot check of geomtrace on a machine with a CUDA GPU: the CUDA tests, then the capture,
# memory, aggregator and communication benchmarks, all in one results file. Budget: < 5 min
# on one modern GPU (each part has its own timeout; a part that fails or times out is recorded
# as such and the script goes on; the timeouts sum to 300 s).
#
#     bash benchmarks/gpu_check.sh                  # writes gpu_check_results.txt
#     bash benchmarks/gpu_check.sh /tmp/results.txt
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Needs: torch with CUDA, pytest, and this repository (run from its root or anywhere).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_results.txt}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT"
FAILED=0

part() {  # part NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    echo "=== $name ($*)" | tee -a "$OUT"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$OUT" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
    echo "=== $name: rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT"
}

{
    echo "geomtrace GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} >> "$OUT" 2>&1
cat "$OUT"
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device visible to torch: nothing to check" | tee -a "$OUT"
    exit 2
fi

# The CUDA tests (no host sync in traced/GradVac steps, fp32 Grams from bf16/fp16, CUDA = CPU),
# then the CPU distributed/FSDP tests as a sanity check of the same checkout.
part "tests: CUDA" 60 "$PY" -m pytest -q -p no:cacheprovider tests/geomtrace/test_cuda.py -rs
part "tests: distributed + fsdp (gloo)" 60 "$PY" -m pytest -q -p no:cacheprovider \
    tests/geomtrace/test_distributed.py tests/geomtrace/test_fsdp.py
# Benchmarks, sized to fit the budget.
part "bench: capture (cuda)" 45 "$PY" benchmarks/capture.py --device cuda --tasks 8 24 --repeats 5
part "bench: memory (cuda)" 45 "$PY" benchmarks/memory.py --device cuda
part "bench: aggregators (quick)" 45 "$PY" benchmarks/aggregators.py --quick
part "bench: communication (2 gloo ranks)" 45 "$PY" benchmarks/communication.py --tasks 8 24 100 --width 128

echo "done: $FAILED part(s) failed; results in $OUT" | tee -a "$OUT"
exit $((FAILED > 0))
