#!/usr/bin/env bash
# Audit a generator checkpoint before it ships: keep the report, block on a failed gate.
# Usage: audit_gate.sh CHECKPOINT TRAIN_DIR HOLDOUT_DIR OUT_DIR [BASELINE_JSON]
set -u
checkpoint=$1 train=$2 holdout=$3 out=$4 baseline=${5:-}
mkdir -p "$out"
args=(check --generator "$checkpoint" --train "$train" --holdout "$holdout"
      --html "$out/report.html" --json "$out/result.json" --junit "$out/junit.xml")
[ -n "$baseline" ] && args+=(--baseline "$baseline")
ganaudit "${args[@]}"
status=$?
case $status in
  0) echo "ganaudit: pass; report in $out/report.html" ;;
  1) echo "ganaudit: a gate failed; see $out/report.html" >&2 ;;
  *) echo "ganaudit: could not audit (exit $status); fix the input named above" >&2 ;;
esac
exit $status
