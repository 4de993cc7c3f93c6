"""The release gate: declarative conditions over the result's metrics, pass/warn/fail.

A gate names a metric by its dotted path in the JSON result, a comparison and a threshold.
``severity = "fail"`` gates decide the verdict; ``"warn"`` gates are reported only. Baseline
rules compare the result with an earlier one (``--baseline``) and add one gate row each.
:func:`apply_gates` evaluates both on a result and sets its verdict.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from ganaudit.catalog import gate_metrics
from ganaudit.errors import GanauditError
from ganaudit.result import AuditResult, dig

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
SEVERITIES = ("fail", "warn")

# Every metric a gate may name, with its direction (True where higher is better): the catalog's numbers.
METRICS = gate_metrics()


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


@dataclass(frozen=True)
class BaselineRule:
    """A metric may not regress from the baseline by more than ``margin``.

    The bad direction comes from ``METRICS`` (e.g. coverage may not drop, the flagged
    fraction may not rise). ``relative`` makes ``margin`` a fraction of the baseline value.
    """

    metric: str
    margin: float
    relative: bool = False
    severity: str = "fail"


DEFAULT_BASELINE_RULES = (
    BaselineRule("memorization.flagged_fraction", 0.02),
    BaselineRule("coverage.coverage", 0.05),
    BaselineRule("coverage.recall", 0.05),
    BaselineRule("coverage.precision", 0.05),
    BaselineRule("coverage.modes.covered_fraction", 0.0),
)


def baseline_rules_from_config(entries) -> tuple[BaselineRule, ...]:
    """Build baseline rules from config tables; unknown keys or metrics are errors."""
    rules = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - set(BaselineRule.__dataclass_fields__)
        if unknown:
            raise GanauditError(f"baseline rule {i + 1}: unknown key(s) {', '.join(sorted(unknown))}; a rule has metric, margin, relative, severity")
        if "metric" not in entry or "margin" not in entry:
            raise GanauditError(f"baseline rule {i + 1}: needs metric and margin")
        if entry["metric"] not in METRICS:
            raise GanauditError(f"baseline rule {i + 1}: unknown metric {entry['metric']!r}; known: {', '.join(METRICS)}")
        if entry.get("severity", "fail") not in SEVERITIES:
            raise GanauditError(f"baseline rule {i + 1}: severity must be fail or warn")
        if not isinstance(entry["margin"], (int, float)) or entry["margin"] < 0:
            raise GanauditError(f"baseline rule {i + 1}: margin must be a number >= 0, got {entry['margin']!r}")
        rules.append(BaselineRule(**entry))
    return tuple(rules)


def evaluate_baseline(rules: tuple[BaselineRule, ...], lookup, baseline_lookup) -> list[dict]:
    """One gate row per rule: the current value against the baseline value moved by the margin."""
    rows = []
    for rule in rules:
        value, base = lookup(rule.metric), baseline_lookup(rule.metric)
        higher_is_better = METRICS[rule.metric]
        op = ">=" if higher_is_better else "<="
        row = {"name": f"baseline:{rule.metric}", "metric": rule.metric, "op": op, "severity": rule.severity,
               "baseline": base, "value": value,
               "reason": f"may not {'drop' if higher_is_better else 'rise'} by more than {rule.margin:g}"
                         f"{' of the baseline value' if rule.relative else ''} from the baseline"}
        if value is None or base is None:
            row.update(threshold=None, passed=None, status="skipped",
                       message=f"{rule.metric} is missing from this run or from the baseline")
        else:
            allowed = rule.margin * abs(base) if rule.relative else rule.margin
            threshold = base - allowed if higher_is_better else base + allowed
            passed = bool(OPS[op](value, threshold))
            row.update(threshold=threshold, passed=passed, status="pass" if passed else rule.severity,
                       message=f"{rule.metric} = {value:.4g} against baseline {base:.4g} (needs {op} {threshold:.4g})")
        rows.append(row)
    return rows


def apply_gates(result: AuditResult, gates_config: tuple[dict, ...], warn_only: bool,
                baseline: AuditResult | None = None, baseline_path=None,
                baseline_rules_config: tuple[dict, ...] = (), view=lambda snapshot: snapshot) -> None:
    """Evaluate the policy's gates (and the baseline rules) on ``result`` and set its verdict.

    Args:
        gates_config: the config's gate tables (empty: ``DEFAULT_GATES``).
        warn_only: report failed gates but pass.
        baseline: an earlier result to compare with, read by :func:`read_baseline`.
        baseline_path: where it was read from (recorded in ``result.baseline``).
        baseline_rules_config: the config's baseline rules (empty: ``DEFAULT_BASELINE_RULES``).
        view: the result as gates read it, from its dict (and the baseline's); the review's
            ``gate_view`` counts only flags that are not waived.
    """
    gates = gates_from_config(gates_config) if gates_config else DEFAULT_GATES
    snapshot = view(result.to_dict())
    result.gates = evaluate(gates, lambda metric: dig(snapshot, metric))
    if baseline is not None:
        result.gates += _compare_with_baseline(result, snapshot, view(baseline.to_dict()), baseline, baseline_path,
                                               baseline_rules_config)
    result.verdict = verdict(result.gates, warn_only)


def read_baseline(path) -> AuditResult:
    """A previous audit's JSON result, checked to be one."""
    try:
        return AuditResult.read_json(path)
    except (OSError, ValueError, TypeError) as e:
        raise GanauditError(f"--baseline {path}: not a readable ganaudit JSON result ({e})") from None


def _compare_with_baseline(result: AuditResult, snapshot: dict, baseline_snapshot: dict, baseline: AuditResult,
                           baseline_path, rules_config: tuple[dict, ...]) -> list[dict]:
    """Gate rows for regressions against ``baseline``; the result records what it was compared with."""
    if baseline.embedder.get("name") != result.embedder["name"]:
        raise GanauditError(
            f"--baseline was audited with embedder {baseline.embedder.get('name')!r}, this run with "
            f"{result.embedder['name']!r}: figures from different feature spaces cannot be compared"
        )
    rules = baseline_rules_from_config(rules_config) if rules_config else DEFAULT_BASELINE_RULES
    result.baseline = {"path": str(baseline_path), "verdict": baseline.verdict,
                       "generator": baseline.generator.get("path"), "generator_sha256": baseline.generator.get("sha256")}
    return evaluate_baseline(rules, lambda m: dig(snapshot, m), lambda m: dig(baseline_snapshot, m))
