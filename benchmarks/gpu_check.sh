#!/usr/bin/env bash
# One short GPU check, for a session lent a CUDA machine: the end-to-end fixture audit on CUDA,
# embedder throughput (inception, dinov2 with random weights of the real shapes), faiss GPU
# exact search (50k queries x 1M x 768-d) and sampling throughput. Figures go to OUT as one JSON
# per step and gpu_check.md (the device named); docs/benchmarks.md records them.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--cpu-smoke] [--no-faiss-install]
#
# --cpu-smoke: every step tiny on the CPU, no installs (the test suite runs this).
# The faiss step needs a GPU build of faiss: unless one is importable already, this script
# pip-installs faiss-gpu-cu12 into OUT/faiss-gpu (a --target folder on PYTHONPATH for that step
# only; the environment's faiss-cpu is left alone). If that fails, the step says so in its JSON
# and the other steps still run. Each step has a time limit (STEP_TIMEOUT seconds, default 240).
set -u
OUT=benchmarks/results/gpu
SMOKE=""
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --cpu-smoke) SMOKE="--cpu-smoke"; shift ;;
    --no-faiss-install) INSTALL=0; shift ;;
    *) echo "usage: $0 [--out DIR] [--cpu-smoke] [--no-faiss-install]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LIMIT=${STEP_TIMEOUT:-240}
mkdir -p "$OUT"
failed=0
step() {  # step NAME [ENV...]: run one step under the time limit; a failure is recorded, not fatal
  local name="$1"; shift
  echo "== $name"
  if ! env "$@" timeout "$LIMIT" "$PY" benchmarks/gpu_check.py "$name" --out "$OUT" $SMOKE; then
    failed=1
    [ -s "$OUT/$name.json" ] || echo "{\"status\": \"failed\", \"error\": \"timed out or crashed (limit ${LIMIT}s)\"}" > "$OUT/$name.json"
  fi
}

step device
step e2e
step embed

FAISS_ENV=()
if [ -z "$SMOKE" ]; then
  if "$PY" -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' 2>/dev/null; then
    FAISS_ENV=(GANAUDIT_FAISS_BUILD="installed GPU build")
  elif [ "$INSTALL" = 1 ]; then
    echo "== installing faiss-gpu-cu12 into $OUT/faiss-gpu (this step only)"
    if "$PY" -m pip install -q --target "$OUT/faiss-gpu" faiss-gpu-cu12 >"$OUT/faiss_install.log" 2>&1 &&
       PYTHONPATH="$OUT/faiss-gpu${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' >>"$OUT/faiss_install.log" 2>&1; then
      FAISS_ENV=(PYTHONPATH="$OUT/faiss-gpu${PYTHONPATH:+:$PYTHONPATH}" GANAUDIT_FAISS_BUILD="faiss-gpu-cu12 (pip, this run)")
    else
      echo "faiss-gpu-cu12 could not be installed or sees no GPU: see $OUT/faiss_install.log; the faiss step will say so"
      FAISS_ENV=(GANAUDIT_FAISS_BUILD="faiss-cpu (faiss-gpu-cu12 install failed: $OUT/faiss_install.log)")
    fi
  else
    FAISS_ENV=(GANAUDIT_FAISS_BUILD="faiss-cpu (--no-faiss-install)")
  fi
else
  FAISS_ENV=(GANAUDIT_FAISS_BUILD="faiss-cpu (--cpu-smoke)")
fi
step faiss "${FAISS_ENV[@]}"
step sample
"$PY" benchmarks/gpu_check.py report --out "$OUT" $SMOKE
exit $failed
