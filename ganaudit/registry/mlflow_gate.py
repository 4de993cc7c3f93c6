"""``ganaudit mlflow gate``: audit one registered model version and record the verdict in MLflow.

One gate, in order: resolve the version; skip it when it already carries a verdict for the
same key (model, version, policy digest, tool version, baseline run); download its
generator; audit it with the repository's policy; log a run (metrics ``ganaudit.*``,
parameters, ``report.html``, ``result.json``, ``junit.xml``, the training set as a dataset
input); tag the version; move the alias. Writes happen after the audit, run first and the
version's ``ganaudit.verdict`` tag last, so an interruption at any point is repaired by the
next gate of the same key: a finished run is reused, an unfinished one is deleted.

A version that cannot be audited (artifact missing, corrupt, a refused pickle) gets
``ganaudit.verdict = error`` and ``ganaudit.reason``; errors are never deduplicated.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.registry import mlflow_log
from ganaudit.registry.artifacts import VersionError, download_run_file, download_version, find_generator
from ganaudit.registry.client import ModelRef, RegistryUnavailable, not_found, registry_call, resolve_version
from ganaudit.registry.policy import build_config, gate_key, load_policy, policy_digest
from ganaudit.registry.tags import (
    ERROR, FAIL, PASS, TAG_KEY, TAG_RUN_ID, TAG_VERDICT, error_tags, result_tags,
)

log = logging.getLogger(__name__)

EXIT_CODES = {PASS: 0, FAIL: 1, ERROR: 2}


@dataclass(frozen=True)
class GateOptions:
    """How to gate: the registry, the audit flags and what to do with the verdict.

    Attributes:
        tracking_uri: the MLflow server (tracking and registry).
        flags: AuditConfig fields given as flags (``train``, ``holdout``, ``num_samples`` ...).
        config: the policy file; None: ganaudit.toml / pyproject.toml found in ``cwd``.
        artifact: the generator's path inside the version's artifacts; None: found.
        alias: given to a version that passes, taken from one that does not.
        baseline_alias: compare with the version holding this alias (its ``result.json``).
        experiment: the experiment audit runs are logged to.
        force: audit and log again even when the version has a verdict for this key.
        out_dir: keep report.html, result.json and junit.xml here (None: a temporary folder).
    """

    tracking_uri: str
    flags: dict = field(default_factory=dict)
    config: Path | None = None
    cwd: Path = Path(".")
    artifact: str | None = None
    alias: str = "audited"
    baseline_alias: str | None = None
    experiment: str = "ganaudit"
    force: bool = False
    out_dir: Path | None = None


@dataclass
class GateOutcome:
    """What one gate decided. ``skipped``: a verdict for the same key was already recorded."""

    model: str
    version: str
    verdict: str
    run_id: str | None = None
    reason: str = ""
    skipped: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


@dataclass
class Baseline:
    """The version a ``--baseline-alias`` points at, and the run holding its result."""

    version: str | None = None
    run_id: str | None = None
    note: str = "none"


def gate_version(client, ref: ModelRef, options: GateOptions) -> GateOutcome:
    """Gate the version ``ref`` names (see the module docstring).

    Raises:
        RegistryUnavailable: the registry could not be reached; nothing was half-written.
        GanauditError: bad usage (no such version, a bad policy, no baseline result).
    """
    version = resolve_version(client, ref)
    file_values, source = load_policy(options.config, options.cwd)
    baseline = find_baseline(client, version, options.baseline_alias)
    from ganaudit import __version__

    key = gate_key(version.name, version.version, policy_digest(file_values, options.flags), __version__,
                   baseline.run_id)
    experiment_id = mlflow_log.experiment_id(client, options.experiment)
    if not options.force:
        done = _already_gated(client, version, key, experiment_id, options)
        if done is not None:
            return done
    with tempfile.TemporaryDirectory(prefix="ganaudit-mlflow-") as tmp:
        return _audit_and_record(client, version, key, experiment_id, (file_values, source), baseline,
                                 options, Path(tmp))


def find_baseline(client, version, alias: str | None) -> Baseline:
    """The audited version holding ``alias``: none when the alias is unset or on this version."""
    if not alias:
        return Baseline()
    try:
        holder = registry_call("resolve the baseline alias", client.get_model_version_by_alias, version.name, alias)
    except RegistryUnavailable:
        raise
    except Exception as e:
        if not_found(e):
            log.warning("baseline alias %r is not set on %s: auditing without a baseline", alias, version.name)
            return Baseline(note=f"none (alias {alias} not set)")
        raise
    if str(holder.version) == str(version.version):
        return Baseline(note=f"none (this version holds {alias})")
    run_id, verdict = holder.tags.get(TAG_RUN_ID), holder.tags.get(TAG_VERDICT)
    if not run_id or verdict not in (PASS, FAIL):
        raise GanauditError(f"--baseline-alias {alias}: version {holder.version} of {version.name} has no ganaudit "
                            f"result to compare with; gate it first (ganaudit mlflow gate models:/{version.name}/"
                            f"{holder.version})")
    return Baseline(str(holder.version), run_id, f"version {holder.version} ({alias})")


def _already_gated(client, version, key: str, experiment_id: str, options: GateOptions) -> GateOutcome | None:
    """The recorded outcome for ``key``: from the version's tags, or from a run an interruption orphaned."""
    tags = version.tags or {}
    if tags.get(TAG_KEY) == key and tags.get(TAG_VERDICT) in (PASS, FAIL) and tags.get(TAG_RUN_ID):
        verdict = tags[TAG_VERDICT]
        log.info("%s v%s already gated with this policy (%s, run %s): not logging again (--force does)",
                 version.name, version.version, verdict, tags[TAG_RUN_ID])
    else:
        run = mlflow_log.finished_run(client, experiment_id, key)
        if run is None:
            return None
        verdict = run.data.tags.get(TAG_VERDICT)
        log.info("%s v%s: reusing run %s, logged before an interruption", version.name, version.version,
                 run.info.run_id)
        mlflow_log.set_version_tags(client, version, mlflow_log.version_tags_of_run(run))
        tags = {TAG_RUN_ID: run.info.run_id}
    mlflow_log.apply_alias(client, version, verdict == PASS, options.alias)
    return GateOutcome(version.name, str(version.version), verdict, tags[TAG_RUN_ID], skipped=True)


def _audit_and_record(client, version, key, experiment_id, policy, baseline: Baseline, options: GateOptions,
                      tmp: Path) -> GateOutcome:
    from ganaudit.audit import audit_with_context
    from ganaudit.report import write_outputs

    try:
        root = download_version(client, version, tmp / "version", options.tracking_uri)
        artifact = find_generator(root, options.artifact, bool(options.flags.get("trust_checkpoint")))
    except VersionError as e:
        return record_error(client, version, key, str(e), options)
    out = options.out_dir or tmp / "out"
    flags = dict(artifact.settings) | {k: v for k, v in options.flags.items() if v is not None}
    flags |= {"generator": artifact.path, "html": out / "report.html", "json": out / "result.json",
              "junit": out / "junit.xml", "progress": False}
    if baseline.run_id:
        flags["baseline"] = download_run_file(baseline.run_id, "result.json", tmp / "baseline", options.tracking_uri)
    config = build_config(policy[0], policy[1], flags)  # a bad policy is the caller's error, not the version's
    try:
        result, context = audit_with_context(config)
    except RegistryUnavailable:
        raise
    except GanauditError as e:  # name the file as it is in the registry, not in our temporary folder
        reason = str(e).replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
        return record_error(client, version, key, reason, options)
    write_outputs(result, context, config)
    run_id = mlflow_log.log_run(client, experiment_id, version, key, result, out,
                                {"artifact": artifact.relative, "policy_source": policy[1],
                                 "baseline": baseline.note})
    tags = result_tags(result, run_id, key, baseline.note)
    mlflow_log.set_version_tags(client, version, tags)
    mlflow_log.apply_alias(client, version, result.verdict == PASS, options.alias)
    log.info("%s v%s: %s (run %s)", version.name, version.version, result.verdict, run_id)
    return GateOutcome(version.name, str(version.version), result.verdict, run_id)


def record_error(client, version, key: str, reason: str, options: GateOptions) -> GateOutcome:
    """Tag a version that could not be audited (``ganaudit.verdict = error``) and take its alias."""
    log.warning("%s v%s cannot be audited: %s", version.name, version.version, reason)
    mlflow_log.set_version_tags(client, version, error_tags(reason))
    mlflow_log.apply_alias(client, version, False, options.alias)
    return GateOutcome(version.name, str(version.version), ERROR, None, reason)

