"""The release gate: declarative conditions over the result's metrics, pass/warn/fail.

A gate names a metric by its dotted path in the JSON result, a comparison and a threshold.
``severity = "fail"`` gates decide the verdict; ``"warn"`` gates are reported only.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from ganaudit.errors import GanauditError

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
SEVERITIES = ("fail", "warn")

# Every metric a gate may name, with its direction: True where higher is better.
METRICS = {
    "memorization.flagged_fraction": False,
    "memorization.n_flagged": False,
    "memorization.n_significant": False,
    "memorization.ct_statistic": True,
    "memorization.authenticity": True,
    "memorization.mia_auc": False,
    "coverage.precision": True,
    "coverage.recall": True,
    "coverage.density": True,
    "coverage.coverage": True,
    "coverage.fd": False,
    "coverage.kd": False,
    "coverage.duplicate_fraction": False,
    "coverage.modes.covered_fraction": True,
    "coverage.modes.kl_divergence": False,
}


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    op: str
    threshold: float
    severity: str = "fail"
    reason: str = ""


DEFAULT_GATES = (
    Gate("leaks", "memorization.flagged_fraction", "<=", 0.05, "fail",
         "at most 5% of samples may be closer to a training image than the calibration allows "
         "(5x the calibrated false-positive rate alpha = 1%)"),
    Gate("modes", "coverage.modes.covered_fraction", ">=", 0.9, "fail",
         "at least 90% of the training modes must be produced at a quarter of their training share or more"),
    Gate("collapse", "coverage.duplicate_fraction", "<=", 0.25, "fail",
         "at most 25% of samples may be near-duplicates of another sample (about 1% of training images are)"),
    Gate("coverage", "coverage.coverage", ">=", 0.25, "warn",
         "the samples should cover a quarter of the training set's neighbourhoods (Naeem et al. coverage)"),
)


def gates_from_config(entries: tuple[dict, ...] | list[dict]) -> tuple[Gate, ...]:
    """Build gates from config tables; unknown keys, metrics, ops or severities are errors."""
    gates = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {f for f in Gate.__dataclass_fields__}
        if unknown:
            raise GanauditError(f"gate {i + 1}: unknown key(s) {', '.join(sorted(unknown))}; a gate has name, metric, op, threshold, severity, reason")
        missing = {"metric", "op", "threshold"} - set(entry)
        if missing:
            raise GanauditError(f"gate {i + 1}: missing {', '.join(sorted(missing))}")
        if entry["metric"] not in METRICS:
            raise GanauditError(f"gate {i + 1}: unknown metric {entry['metric']!r}; known: {', '.join(METRICS)}")
        if entry["op"] not in OPS:
            raise GanauditError(f"gate {i + 1}: op must be one of {', '.join(OPS)}, got {entry['op']!r}")
        if entry.get("severity", "fail") not in SEVERITIES:
            raise GanauditError(f"gate {i + 1}: severity must be fail or warn, got {entry['severity']!r}")
        if not isinstance(entry["threshold"], (int, float)) or isinstance(entry["threshold"], bool):
            raise GanauditError(f"gate {i + 1}: threshold must be a number, got {entry['threshold']!r}")
        gates.append(Gate(**{"name": entry.get("name", entry["metric"]), **entry}))
    return tuple(gates)


def evaluate(gates: tuple[Gate, ...], lookup) -> list[dict]:
    """Evaluate gates; ``lookup(metric)`` returns the metric's value or None if not computed."""
    out = []
    for gate in gates:
        value = lookup(gate.metric)
        row = asdict(gate)
        if value is None:
            row.update(value=None, passed=None, status="skipped",
                       message=f"{gate.metric} was not computed in this run")
        else:
            passed = bool(OPS[gate.op](value, gate.threshold))
            status = "pass" if passed else gate.severity
            row.update(value=value, passed=passed, status=status,
                       message=f"{gate.metric} = {value:.4g} {'meets' if passed else 'breaks'} {gate.op} {gate.threshold:g}")
        out.append(row)
    return out


def verdict(evaluated: list[dict], warn_only: bool = False) -> str:
    """``"fail"`` when a fail-severity gate failed (and not ``warn_only``), else ``"pass"``."""
    failed = any(row["status"] == "fail" for row in evaluated)
    return "fail" if failed and not warn_only else "pass"
