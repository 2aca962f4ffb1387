#!/usr/bin/env bash
# The GPU acceptance of issue 19, in one run of at most 8 minutes (every step has its own timeout):
#
#   1. the tests marked gpu             python3 -m pytest -m gpu tests/ -q
#   2. the full-library audit           softaudit run builtin:torch builtin:triton-{softmax,online,ce}
#                                       --device cuda --json, cold and then warm (its own cache), timed
#   3. the same with examples/buggy_online_softmax.py added, and a check over its JSON: how many
#      FAILs blame a CUDA error on a record whose own input is not expected to cause one (must be 0)
#   4. --bench: softmax forward of builtin:torch and the Triton built-ins at 4096x32768 and
#      1024x128256, float32 and bfloat16
#   5. a short softaudit search (examples/tiled_softmax.py --op softmax --budget 20)
#
# Usage: benchmarks/gpu_check.sh [--device cuda|cpu] [OUTPUT_DIR]
#
# Everything is written to one folder: $OUT when set, else OUTPUT_DIR, else
# /tmp/softaudit-gpu-check-<date>; SUMMARY.txt there has each step's exit status and wall time.
# The project runs from this checkout (PYTHONPATH, python3 -m softaudit; a two-line `softaudit`
# shim is put on PATH for the tests that call the command): nothing is installed. `--device cpu`
# is a dry run on a machine without a GPU: the same steps over small selections (a few minutes),
# the gpu tests then skip.
set -u

DEVICE=cuda
DIR_ARG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
        *) DIR_ARG="$1"; shift ;;
    esac
done
case "$DEVICE" in cuda|cuda:*|cpu) ;; *) echo "gpu_check.sh: --device is cuda, cuda:N or cpu" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${OUT:-${DIR_ARG:-/tmp/softaudit-gpu-check-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PY="$(command -v "${PYTHON:-python3}")"
SHIM="$(mktemp -d)"                               # the shim, and the reference cache (not an output)
trap 'rm -rf "$SHIM"' EXIT
printf '#!/bin/sh\nexec "%s" -m softaudit "$@"\n' "$PY" > "$SHIM/softaudit"
chmod +x "$SHIM/softaudit"
export PATH="$SHIM:$PATH"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export SOFTAUDIT_CACHE_DIR="$SHIM/cache"          # its own reference cache: step 2 starts cold
export SOFTAUDIT_CORPUS_DIR="$DEST/corpus"        # nobody's found cases; search saves there
export COLUMNS=160 NO_COLOR=1
rm -rf "$SOFTAUDIT_CACHE_DIR"
cd "$REPO"
JOBS="$(nproc 2>/dev/null || echo 4)"
echo "gpu_check: device $DEVICE, outputs in $DEST"

TRITON=(builtin:triton-softmax builtin:triton-online builtin:triton-ce)
if [ "$DEVICE" = cpu ]; then
    # A dry run: Triton is interpreted, so a few cases in one format, and small bench shapes.
    SELECT=(--dtype float32 --case 'ce-target-out-of-range-*' --case ce-target-below-max-100
            --case offset-plus-1e3 --case mask-prefix --case posinf-one)
    BENCH=(--shape 64x1024 --dtype float32)
    BUDGET=10
    T_TEST=240; T_COLD=240; T_WARM=150; T_BUGGY=150; T_BENCH=150; T_SEARCH=60
else
    SELECT=()
    BENCH=(--shape 4096x32768 --shape 1024x128256 --dtype float32 --dtype bfloat16)
    BUDGET=20
    T_TEST=140; T_COLD=110; T_WARM=55; T_BUGGY=70; T_BENCH=50; T_SEARCH=45   # with the check's 10: 480 s
fi

SUMMARY="$DEST/SUMMARY.txt"
{ echo "softaudit gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) device=$DEVICE jobs=$JOBS"
  echo "checkout: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1
} > "$SUMMARY"

# step NAME TIMEOUT CMD...: run it with its output in NAME.log, append status and wall time to SUMMARY.
step() {
    local name="$1" limit="$2"; shift 2
    local t0 t1 rc
    echo "== $name (at most ${limit} s): $*" | tee -a "$SUMMARY"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$DEST/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local wall; wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    local said="exit $rc"; [ "$rc" = 124 ] || [ "$rc" = 137 ] && said="TIMED OUT (exit $rc)"
    echo "   $said, ${wall} s; $(tail -n 1 "$DEST/$name.log")" | tee -a "$SUMMARY"
}

# 1. The tests marked gpu (on a CPU they skip, saying why).
# -v: a run cut short by its timeout still shows which tests passed (pytest-timeout is not assumed).
step 1-pytest-gpu "$T_TEST" "$PY" -m pytest -m gpu tests/ -v -rs -p no:cacheprovider

# 2. The full-library audit, cold and then warm: the audit alone (--no-diagnose), as issue 19 times
#    it; step 3 keeps the diagnosis.
step 2-audit-cold "$T_COLD" softaudit run builtin:torch "${TRITON[@]}" --device "$DEVICE" --jobs "$JOBS" \
    "${SELECT[@]}" --json "$DEST/audit-cold.json" --findings 20 --no-diagnose
step 2-audit-warm "$T_WARM" softaudit run builtin:torch "${TRITON[@]}" --device "$DEVICE" --jobs "$JOBS" \
    "${SELECT[@]}" --json "$DEST/audit-warm.json" --findings 20 --no-diagnose

# 3. With the buggy example: its FAILs are its own; none may blame another record's CUDA error.
step 3-audit-buggy "$T_BUGGY" softaudit run builtin:torch "${TRITON[@]}" examples/buggy_online_softmax.py \
    --device "$DEVICE" --jobs "$JOBS" "${SELECT[@]}" --json "$DEST/audit-buggy.json" --findings 20
step 3-check 10 "$PY" - "$DEST/audit-cold.json" "$DEST/audit-warm.json" "$DEST/audit-buggy.json" <<'EOF'
"""Per JSON: FAILs blaming a CUDA error on a record whose own input is not expected to cause one."""
import fnmatch, json, sys
from softaudit.runner.cuda_errors import sticky_error

EXPECTED = [("builtin:torch", "cross_entropy", "ce-target-out-of-range-*")]  # torch's kernel asserts there
for path in sys.argv[1:]:
    try:
        doc = json.load(open(path))
    except (OSError, ValueError) as exc:
        print(f"{path}: no JSON ({exc})"); continue
    wrong, expected = [], []
    for r in doc["results"]:
        text = " ".join([*(r.get("reasons") or []), r.get("error") or "", *(r.get("notes") or [])])
        if sticky_error(text) is None and "cannot place the input" not in text:
            continue
        mine = any(r["candidate"] == c and r["op"] == op and fnmatch.fnmatch(r["case"], case) for c, op, case in EXPECTED)
        (expected if mine else wrong).append(r)
    s = doc["summary"]
    print(f"{path.rsplit('/', 1)[-1]}: {s['records']} records, {s['pass']} PASS {s['warn']} WARN {s['fail']} FAIL "
          f"{s['skip']} SKIP in {s['seconds']:.1f} s; worker restarts {s['worker_restarts']}; "
          f"CUDA errors where expected {len(expected)} ({sum(r['verdict'] == 'FAIL' for r in expected)} FAIL); "
          f"FAILs blaming a CUDA error elsewhere: {sum(r['verdict'] == 'FAIL' for r in wrong)}")
    for r in wrong[:10]:
        print("   ", r["verdict"], r["candidate"], r["op"], r["direction"], r["dtype"], r["case"], (r.get("reasons") or [""])[0][:200])
    fails = {}
    for r in doc["results"]:
        if r["verdict"] == "FAIL":
            fails[r["candidate"]] = fails.get(r["candidate"], 0) + 1
    print("    FAILs by candidate:", fails or "none")
EOF
cat "$DEST/3-check.log" >> "$SUMMARY"

# 4. Speed: softmax forward at LLM shapes (the audit before it is one case: step 2 did the rest).
step 4-bench "$T_BENCH" softaudit run builtin:torch builtin:triton-softmax builtin:triton-online --device "$DEVICE" \
    --op softmax --direction forward --case offset-plus-1e3 --bench "${BENCH[@]}" --jobs "$JOBS" \
    --json "$DEST/bench.json" --no-diagnose

# 5. A short search on the device.
step 5-search "$T_SEARCH" softaudit search examples/tiled_softmax.py --op softmax --budget "$BUDGET" \
    --device "$DEVICE" --json "$DEST/search.json" --repro "$DEST/search-repro.py"

echo "gpu_check: done; outputs in $DEST (SUMMARY.txt)"
cat "$SUMMARY"
