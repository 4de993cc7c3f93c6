"""Writing an audit into MLflow: the run, the version's tags, the alias.

Every call goes through ``registry_call``, so an unreachable server surfaces as
RegistryUnavailable (retried by the receiver) and never as a verdict.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from ganaudit.registry.client import not_found, registry_call
from ganaudit.registry.tags import TAG_KEY, TAG_RUN_ID, TAG_VERDICT

log = logging.getLogger(__name__)

OUTPUT_FILES = ("report.html", "result.json", "junit.xml")
# result paths logged as metrics ganaudit.<path>
METRIC_PATHS = (
    "memorization.flagged_fraction", "memorization.n_flagged", "memorization.n_samples", "memorization.threshold",
    "memorization.ct_statistic", "memorization.authenticity", "memorization.mia_auc",
    "coverage.precision", "coverage.recall", "coverage.density", "coverage.coverage", "coverage.fd", "coverage.kd",
    "coverage.duplicate_fraction", "coverage.modes.covered", "coverage.modes.total", "coverage.modes.covered_fraction",
    "timings.total",
)
PARAM_PATHS = ("embedder.name", "memorization.copy_embedder.name", "generator.n_samples", "generator.seed",
               "generator.sha256", "generator.format", "generator.z_dim", "memorization.alpha", "train.n_images")
DIGEST_MAX = 32  # MLflow keeps at most 36 characters of a dataset digest


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created when missing."""
    found = registry_call("read the experiment", client.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    try:
        return registry_call("create the experiment", client.create_experiment, name)
    except Exception as e:  # another gate created it meanwhile
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        return registry_call("read the experiment", client.get_experiment_by_name, name).experiment_id


def runs_with_key(client, experiment_id: str, key: str) -> list:
    """Audit runs logged for gate ``key`` (any status)."""
    return registry_call("search audit runs", client.search_runs, [experiment_id],
                         filter_string=f"tags.`{TAG_KEY}` = '{key}'", max_results=50)


def finished_run(client, experiment_id: str, key: str):
    """The finished audit run of ``key``, or None."""
    done = [r for r in runs_with_key(client, experiment_id, key) if r.info.status == "FINISHED"]
    return done[0] if done else None


def version_tags_of_run(run) -> dict[str, str]:
    """The version tags a run was logged with (they are its ``ganaudit.*`` tags), verdict last."""
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("ganaudit.") and not k.startswith("ganaudit.model")}
    verdict = tags.pop(TAG_VERDICT)
    return tags | {TAG_RUN_ID: run.info.run_id, TAG_VERDICT: verdict}


def log_run(client, experiment_id: str, version, key: str, result, out: Path, extra: dict) -> str:
    """Log one finished audit run; unfinished runs of the same key (interrupted gates) are deleted first."""
    from mlflow.entities import Metric, Param

    for stale in runs_with_key(client, experiment_id, key):
        if stale.info.status != "FINISHED":
            log.info("deleting run %s, left unfinished by an interrupted gate", stale.info.run_id)
            registry_call("delete an unfinished run", client.delete_run, stale.info.run_id)
    from ganaudit.registry.tags import result_tags

    tags = {k: v for k, v in result_tags(result, "", key, extra["baseline"]).items() if k != TAG_RUN_ID}
    tags |= {"ganaudit.model_name": version.name, "ganaudit.model_version": str(version.version),
             "ganaudit.model_uri": f"models:/{version.name}/{version.version}"}
    run = registry_call("create the audit run", client.create_run, experiment_id,
                        run_name=f"ganaudit {version.name} v{version.version}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"ganaudit.{p}", float(v), now, 0) for p in METRIC_PATHS if _number(v := result.get(p))]
    metrics += [Metric(f"ganaudit.gate.{g['name']}", float(g["value"]), now, 0) for g in result.gates
                if _number(g.get("value"))]
    params = [Param(f"ganaudit.{p}", str(v)[:6000]) for p in PARAM_PATHS if (v := result.get(p)) is not None]
    params += [Param(f"ganaudit.{k}", str(v)[:6000]) for k, v in extra.items()]
    registry_call("log metrics", client.log_batch, run_id, metrics=metrics, params=params)
    registry_call("log the dataset inputs", client.log_inputs, run_id, datasets=_dataset_inputs(result))
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            registry_call(f"upload {name}", client.log_artifact, run_id, str(out / name))
    registry_call("finish the audit run", client.set_terminated, run_id, "FINISHED")
    return run_id


def _dataset_inputs(result) -> list:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for context, info in (("training", result.train), ("holdout", result.holdout)):
        if not info or not info.get("fingerprint"):
            continue
        profile = {k: info.get(k) for k in ("n_images", "n_classes", "size", "fingerprint")}
        dataset = Dataset(name=context, digest=info["fingerprint"][:DIGEST_MAX], source_type="local",
                          source=json.dumps({"path": info.get("path")}), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def set_version_tags(client, version, tags: dict[str, str]) -> None:
    """Replace the version's ``ganaudit.*`` tags by ``tags``, written in order (verdict last)."""
    stale = [k for k in (version.tags or {}) if k.startswith("ganaudit.") and k not in tags]
    for key in stale:
        registry_call("remove a stale tag", client.delete_model_version_tag, version.name, version.version, key)
    for key, value in tags.items():
        registry_call("tag the version", client.set_model_version_tag, version.name, version.version, key, str(value))


def apply_alias(client, version, passed: bool, alias: str) -> None:
    """Point ``alias`` at the version when it passed; take it away from the version when not."""
    if passed:
        registry_call("set the alias", client.set_registered_model_alias, version.name, alias, version.version)
        return
    try:
        holder = registry_call("read the alias", client.get_model_version_by_alias, version.name, alias)
    except Exception as e:
        if not_found(e):
            return
        raise
    if str(holder.version) == str(version.version):
        log.info("removing alias %r from %s v%s, which did not pass", alias, version.name, version.version)
        registry_call("remove the alias", client.delete_registered_model_alias, version.name, alias)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

