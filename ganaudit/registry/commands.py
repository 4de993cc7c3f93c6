"""``ganaudit mlflow gate`` and ``ganaudit mlflow serve``: their arguments and handlers.

``add_commands(subparsers)`` is the one hook the main CLI calls; each leaf parser carries its
handler as ``args.handler``. Exit codes: 0 pass, 1 fail, 2 bad usage or a version that cannot
be audited (``ganaudit.verdict = error``), 3 the tool itself broke (``internal error: ...``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ganaudit.errors import GanauditError

log = logging.getLogger(__name__)

SECRET_ENV = "GANAUDIT_WEBHOOK_SECRET"
# flag attribute -> AuditConfig field (the same name)
AUDIT_FLAGS = ("train", "holdout", "num_samples", "seed", "embedder", "device", "batch_size", "cache_dir", "no_cache",
               "trust_checkpoint", "arch", "arch_kwargs", "z_dim", "output_range", "num_classes", "skip_corrupt")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, as for every bad input
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_commands(subparsers) -> None:
    """Register ``mlflow gate`` and ``mlflow serve`` on the main CLI's subparsers."""
    group = subparsers.add_parser("mlflow", help="gate MLflow model versions, one by one or from registry webhooks")
    sub = group.add_subparsers(dest="mlflow_command", required=True, parser_class=_Parser)
    gate = sub.add_parser("gate", help="audit one model version and record the verdict in the registry")
    gate.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    gate.add_argument("--artifact", help="the generator's path inside the version's artifacts (default: found)")
    gate.add_argument("--force", action="store_true", help="audit and log again even if this policy already gated it")
    gate.add_argument("--out", type=Path, help="also keep report.html, result.json and junit.xml in this folder")
    _add_shared(gate)
    gate.set_defaults(handler=cmd_gate)
    serve = sub.add_parser("serve", help="receive MLflow webhooks and gate each new model version")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    serve.add_argument("--queue", type=Path, default=Path("ganaudit-queue.sqlite"),
                       help="the persistent queue, an sqlite file (default ./ganaudit-queue.sqlite)")
    serve.add_argument("--secret-env", default=SECRET_ENV,
                       help=f"environment variable holding the webhook secret (default {SECRET_ENV})")
    serve.add_argument("--tolerance", type=float, default=300.0,
                       help="seconds a delivery's timestamp may differ from now (default 300)")
    serve.add_argument("--reconcile-every", type=float, metavar="SECONDS",
                       help="also poll the registry this often for versions without a verdict")
    serve.add_argument("--model", action="append", dest="models", metavar="NAME",
                       help="gate only this registered model (repeatable; default: every model)")
    serve.add_argument("--retry-max", type=float, default=300.0,
                       help="longest wait between retries while the registry is down (default 300 s)")
    _add_shared(serve)
    serve.set_defaults(handler=cmd_serve)


def _add_shared(p: argparse.ArgumentParser) -> None:
    reg = p.add_argument_group("registry")
    reg.add_argument("--tracking-uri", help="the MLflow server (default: $MLFLOW_TRACKING_URI)")
    reg.add_argument("--alias", default="audited", help="alias moved to a version that passes (default audited)")
    reg.add_argument("--baseline-alias", metavar="ALIAS",
                     help="compare with the version holding this alias (e.g. champion) under the baseline rules")
    reg.add_argument("--experiment", default="ganaudit", help="experiment the audit runs go to (default ganaudit)")
    aud = p.add_argument_group("audit (as in `ganaudit check`; the policy file's settings apply underneath)")
    aud.add_argument("--config", type=Path, help="a ganaudit.toml or pyproject.toml (default: found in the working directory)")
    aud.add_argument("--train", type=Path, help="training images the generator is audited against")
    aud.add_argument("--holdout", type=Path, help="held-out images of the training distribution")
    aud.add_argument("--num-samples", type=int, help="samples to draw (default 5000)")
    aud.add_argument("--seed", type=int, help="seed of the latents (default 0)")
    aud.add_argument("--embedder", help="feature network (default pixels)")
    aud.add_argument("--device", help="auto, cpu, cuda or mps")
    aud.add_argument("--batch-size", type=int, help="images per batch")
    aud.add_argument("--cache-dir", type=Path, help="embedding cache folder")
    aud.add_argument("--no-cache", action="store_true", default=None, help="do not use the embedding cache")
    aud.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable training images")
    aud.add_argument("--trust-checkpoint", action="store_true", default=None,
                     help="allow full pickles (MLflow's pytorch pickle format): runs code from the file")
    aud.add_argument("--arch", help="module:Class for weights-only checkpoints (else ganaudit.json in the version)")
    aud.add_argument("--arch-kwargs", help="JSON keyword arguments for --arch")
    aud.add_argument("--z-dim", type=int, help="latent size, when the checkpoint does not say")
    aud.add_argument("--output-range", help="-1,1 or 0,1 or 0,255 (default: detected)")
    aud.add_argument("--num-classes", type=int, help="conditional generators: number of classes")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")


def gate_options(args: argparse.Namespace):
    """GateOptions from parsed arguments."""
    from ganaudit.registry.mlflow_gate import GateOptions

    return GateOptions(
        tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""),
        flags={name: getattr(args, name) for name in AUDIT_FLAGS}, config=args.config, cwd=Path.cwd(),
        artifact=getattr(args, "artifact", None), alias=args.alias, baseline_alias=args.baseline_alias,
        experiment=args.experiment, force=getattr(args, "force", False), out_dir=getattr(args, "out", None),
    )


def cmd_gate(args: argparse.Namespace) -> int:
    """``ganaudit mlflow gate``; a crash is exit 3 through the main CLI, never a verdict."""
    from ganaudit.registry.client import make_client, parse_model_uri
    from ganaudit.registry.mlflow_gate import gate_version

    ref = parse_model_uri(args.model_uri)
    options = gate_options(args)
    outcome = gate_version(make_client(options.tracking_uri), ref, options)
    where = f"models:/{outcome.model}/{outcome.version}"
    if outcome.verdict == "error":
        print(f"error: {where} cannot be audited (tagged ganaudit.verdict=error): {outcome.reason}", file=sys.stderr)
        return outcome.exit_code
    note = "; already gated with this policy (--force audits again)" if outcome.skipped else ""
    print(f"ganaudit: {outcome.verdict.upper()}  {where}  run {outcome.run_id}{note}")
    if options.out_dir is not None and not outcome.skipped:
        print(f"  outputs: {options.out_dir}")
    return outcome.exit_code


def cmd_serve(args: argparse.Namespace) -> int:
    """``ganaudit mlflow serve``: runs until stopped."""
    from ganaudit.registry.serve import ServeOptions, serve_forever

    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise GanauditError(f"no webhook secret: set {args.secret_env} to the secret the MLflow webhook was "
                            "created with (the receiver refuses unsigned deliveries)")
    if args.tolerance <= 0 or (args.reconcile_every is not None and args.reconcile_every <= 0) or args.retry_max <= 0:
        raise GanauditError("--tolerance, --reconcile-every and --retry-max must be positive numbers of seconds")
    if not 0 <= args.port <= 65535:
        raise GanauditError(f"--port must be in 0..65535, got {args.port}")
    options = ServeOptions(gate=gate_options(args), host=args.host, port=args.port, queue=args.queue,
                           secret=secret, tolerance=args.tolerance, reconcile_every=args.reconcile_every,
                           models=tuple(args.models or ()), retry_max=args.retry_max)
    logging.getLogger("ganaudit.registry").setLevel(logging.INFO)  # a service: say what it does
    return serve_forever(options, announce=lambda line: print(line, flush=True))
