"""Put ganaudit in front of an MLflow model registry.

Audits the generator checkpoint of one registered model version, tags the version with the
verdict and key figures, attaches the report to the version's run, and moves the alias
``audited`` to the version only when the audit passed. Exits with ganaudit's code.

    python mlflow_gate.py --model my-gan --version 3 --train data/train --holdout data/holdout

Needs ``pip install mlflow-skinny`` (or ``mlflow``) beside ganaudit, and MLFLOW_TRACKING_URI
/ MLFLOW_REGISTRY_URI pointing at your server.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--version", required=True, help="model version to audit")
    parser.add_argument("--checkpoint", default="generator.pt2", help="checkpoint file inside the version's artifacts")
    parser.add_argument("--train", required=True)
    parser.add_argument("--holdout", required=True)
    parser.add_argument("--alias", default="audited", help="alias given to versions that pass")
    args = parser.parse_args()

    client = MlflowClient()
    version = client.get_model_version(args.model, args.version)
    checkpoint = mlflow.artifacts.download_artifacts(artifact_uri=f"{version.source}/{args.checkpoint}")
    out = Path(tempfile.mkdtemp(prefix="ganaudit-"))
    code = subprocess.call(["ganaudit", "check", "--generator", checkpoint, "--train", args.train,
                            "--holdout", args.holdout, "--html", str(out / "report.html"),
                            "--json", str(out / "result.json"), "--junit", str(out / "junit.xml")])
    if code not in (0, 1):
        return code  # the audit could not run: leave the version untouched
    result = json.loads((out / "result.json").read_text())
    tags = {
        "ganaudit.verdict": result["verdict"],
        "ganaudit.flagged_fraction": f"{result['memorization']['flagged_fraction']:.4f}",
        "ganaudit.modes_covered": f"{result['coverage']['modes']['covered']}/{result['coverage']['modes']['total']}",
        "ganaudit.generator_sha256": result["generator"].get("sha256", ""),
    }
    for key, value in tags.items():
        client.set_model_version_tag(args.model, args.version, key, value)
    if version.run_id:
        client.log_artifacts(version.run_id, str(out), artifact_path="ganaudit")
    if result["verdict"] == "pass":
        client.set_registered_model_alias(args.model, args.alias, args.version)
    print(f"{args.model} v{args.version}: {result['verdict']}; report {out / 'report.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
