"""The command line: argument parsing, config resolution, outputs and exit codes; no logic.

Exit codes: 0 the audit passed, 1 a gate failed, 2 bad usage or bad input, 3 the tool itself
broke (an internal error: a bug to report, never a verdict).
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.registry import add_commands as add_registry_commands
from ganaudit.review.compare import add_compare_command

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, as for every bad input
        # self.prog is the command path ("ganaudit", "ganaudit check", "ganaudit mlflow gate")
        self.exit(EXIT_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganaudit", description="Audit a trained image generator before release.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_check(sub.add_parser("check", help="audit a generator (or a folder of samples) against its training set"))
    report = sub.add_parser("report", help="render the HTML report again from a JSON result")
    report.add_argument("result", type=Path, help="a result.json written by `ganaudit check --json`")
    report.add_argument("--html", type=Path, required=True, help="where to write the report")
    report.add_argument("--template-dir", type=Path, help="a folder of templates overriding the shipped ones")
    add_compare_command(sub)  # `ganaudit compare BASELINE CANDIDATE`; sets args.handler
    sub.add_parser("embedders", help="list the available embedders")
    _add_embed(sub.add_parser("embed", help="precompute a training set's embedding cache (here, or on a Ray cluster)"))
    _add_stats(sub.add_parser("stats", help="write the FID statistics of an image set (pytorch-fid's .npz format)"))
    _add_fd(sub.add_parser("fd", help="FID of a generator or samples against a reference statistics file (no "
                                      "training set)"))
    fetch = sub.add_parser("fetch-weights", help="download an embedder's weights (on a connected machine)")
    fetch.add_argument("name", help="embedder name, e.g. inception, dinov2-vitb14, sscd")
    fetch.add_argument("--dest", type=Path, help="folder to put it in (default: the torch hub checkpoint folder)")
    add_registry_commands(sub)  # `ganaudit mlflow gate|serve`; each sets args.handler
    return parser


CHECK_GROUPS = {"source": "what to audit", "generator": "generator", "run": "run",
                "fid": "FID and other Fréchet distances", "outputs": "outputs"}


def _add_check(p: argparse.ArgumentParser) -> None:
    """``ganaudit check``: one flag per AuditConfig field that declares one (``config.Flag``)."""
    _add_config_flags(p)
    p.add_argument("--config", type=Path,
                   help="a ganaudit.toml or pyproject.toml (default: found in the working directory)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each stage's decisions")


def _add_config_flags(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per AuditConfig field that declares one (all, or those in ``names``)."""
    from ganaudit.config import flag_fields

    groups = {key: p.add_argument_group(title) for key, title in CHECK_GROUPS.items()}
    for name, flag in flag_fields():
        if names is not None and name not in names:
            continue
        option = "--" + name.replace("_", "-")
        if flag.kind == "switch":
            groups[flag.group].add_argument(option, dest=name, action="store_true", default=None, help=flag.help)
        elif flag.kind == "toggle":
            groups[flag.group].add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                            help=flag.help)
        else:
            groups[flag.group].add_argument(option, dest=name, type=flag.parse or str, metavar=flag.metavar,
                                            help=flag.help)


FD_FLAGS = ("generator", "samples", "num_samples", "seed", "device", "batch_size", "skip_corrupt", "z_dim",
            "output_range", "trust_checkpoint", "arch", "arch_kwargs", "num_classes", "class_weights", "truncation",
            "reference_stats", "fid_protocol", "fd_embedders", "fid_infinity", "progress", "weights")


def _add_fd(p: argparse.ArgumentParser) -> None:
    """``ganaudit fd``: check's flags that say what is sampled and how FD is computed."""
    _add_config_flags(p, FD_FLAGS)
    p.add_argument("--json", type=Path, metavar="PATH", help="write the FID entry (as check's coverage.fid) as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is done")


def _add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, help="a folder or .npz/.npy of images")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .npz to write (mu, sigma; pytorch-fid's format)")
    p.add_argument("--fid-protocol", help="pytorch-fid, clean-fid, clean-fid-legacy or torch-fidelity (the default)")
    p.add_argument("--embedder", default="inception", help="feature space (default inception, the FID network)")
    p.add_argument("--weights", type=Path, help="weights file for the embedder")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable image files instead of stopping")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is done")


def _add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, help="the training set: a folder, .npz/.npy, WebDataset .tar shards or Parquet")
    p.add_argument("--embedder", default="pixels", help="feature network, as for check (default pixels)")
    p.add_argument("--copy-embedder", default="auto",
                   help="copy-search features, as for check (default auto: the embedder's copy descriptor)")
    p.add_argument("--weights", type=Path, help="weights file for the embedder")
    p.add_argument("--copy-weights", type=Path, help="weights file for --copy-embedder")
    p.add_argument("--cache-dir", type=Path, help="the embedding cache check reads (default as for check)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--engine", default="local", help="local (this process) or ray (Ray Data actors on a cluster)")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (default "
                   "$RAY_ADDRESS, else a cluster on this machine)")
    p.add_argument("--shard-size", type=int, help="images per shard of a new cache entry, the unit of resumption "
                   "(default 4096)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable image files instead of stopping")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is done")


def _flags(args: argparse.Namespace) -> dict:
    """The config values given as flags (None where a flag was not given)."""
    from ganaudit.config import flag_fields

    return {name: getattr(args, name) for name, _ in flag_fields()}


def cmd_check(args: argparse.Namespace) -> int:
    from ganaudit.audit import audit_with_context
    from ganaudit.config import find_config_file, read_config_file, resolve_config
    from ganaudit.report import write_outputs
    from ganaudit.report.summary import render_summary

    if args.config is not None:
        if not args.config.is_file():
            raise GanauditError(f"--config {args.config}: no such file")
        file_values, source = read_config_file(args.config), str(args.config)
    else:
        found = find_config_file(Path.cwd())
        file_values, source = (found[1], str(found[0])) if found else ({}, "config")
    config = resolve_config(file_values, _flags(args), source)
    result, context = audit_with_context(config)
    write_outputs(result, context, config)
    print(render_summary(result, config))
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


def cmd_fd(args: argparse.Namespace) -> int:
    import json

    from ganaudit.config import resolve_config
    from ganaudit.findings.fd import fd_against_reference, summary_lines
    from ganaudit.plumbing import write_atomic
    from ganaudit.result import versions

    flags = {name: getattr(args, name) for name in FD_FLAGS}
    flags["embedder"] = "inception"  # so that --weights is the FID network's
    config = resolve_config({}, flags, "fd", need_train=False)
    if args.json is not None and args.json.is_dir():
        raise GanauditError(f"--json {args.json} is a folder: give the file to write")
    out = fd_against_reference(config)
    if args.json is not None:
        write_atomic(args.json, json.dumps(out | {"versions": versions()}, indent=2, allow_nan=False) + "\n")
    gen = out["generator"]
    print(f"ganaudit fd: {gen['n_samples']} {'samples of' if gen['kind'] == 'generator' else 'images in'} {gen['path']}")
    print("\n".join(summary_lines(out)))
    if out["fid"] and out["fid"].get("kid_note"):
        print(f"  kid       {out['fid']['kid_note']}")
    return EXIT_PASS


def cmd_report(args: argparse.Namespace) -> int:
    from ganaudit.report.html import render_html
    from ganaudit.plumbing import write_atomic
    from ganaudit.result import AuditResult

    try:
        result = AuditResult.read_json(args.result)
    except FileNotFoundError:
        raise GanauditError(f"{args.result}: no such file") from None
    except (ValueError, TypeError) as e:
        raise GanauditError(f"{args.result}: not a ganaudit JSON result: {e}") from None
    write_atomic(args.html, render_html(result, images=None, template_dir=args.template_dir))
    print(f"report: {args.html}")
    return EXIT_PASS


def cmd_embedders(args: argparse.Namespace) -> int:
    from ganaudit.embedders import embedder_table

    print(f"{'name':<16} {'dim':>6} {'input':>9} {'metric':>6}  weights")
    for row in embedder_table():
        print(f"{row['name']:<16} {row['dim']:>6} {row['input']:>9} {row['metric']:>6}  {row['weights']}")
    return EXIT_PASS


def cmd_stats(args: argparse.Namespace) -> int:
    from ganaudit.findings.fd import write_stats

    if args.batch_size < 1:
        raise GanauditError(f"--batch-size must be positive, got {args.batch_size}")
    info = write_stats(args.images, args.output, args.fid_protocol, args.embedder, args.weights, args.device,
                       args.batch_size, args.skip_corrupt, args.progress)
    how = f"inception, {info['protocol']} protocol" if info["protocol"] else info["embedder"]
    print(f"statistics of {info['n']} images ({how}, {info['dim']}-d): {info['path']}")
    return EXIT_PASS


def cmd_embed(args: argparse.Namespace) -> int:
    from ganaudit.engines import precompute_cache

    rows = precompute_cache(args.images, embedder=args.embedder, copy_embedder=args.copy_embedder,
                            weights=args.weights, copy_weights=args.copy_weights, cache_dir=args.cache_dir,
                            device=args.device, batch_size=args.batch_size, engine=args.engine,
                            ray_address=args.ray_address, skip_corrupt=args.skip_corrupt, progress=args.progress,
                            shard_size=args.shard_size)
    for r in rows:
        print(f"{r['embedder']}: {r['n']} images x {r['dim']}, {r['shards']} shards ({r['cached']} from the cache, "
              f"{r['embedded']} embedded, {r['duplicates']} duplicates dropped) in {r['seconds']} s: {r['entry']}")
    return EXIT_PASS


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from ganaudit.embedders.weights import fetch_weights

    print(f"weights: {fetch_weights(args.name, args.dest)}")
    return EXIT_PASS


def _version() -> str:
    from ganaudit import __version__

    return f"ganaudit {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(force=True, level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"check": cmd_check, "report": cmd_report, "embedders": cmd_embedders,
                "fetch-weights": cmd_fetch_weights, "stats": cmd_stats, "fd": cmd_fd,
                "embed": cmd_embed}
    try:
        return (getattr(args, "handler", None) or commands[args.command])(args)
    except GanauditError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the tool broke: never exit 1, which a gate reads as a verdict
        return internal_error(e, getattr(args, "verbose", False))


def internal_error(error: BaseException, verbose: bool) -> int:
    """Print one line naming the crash (the traceback too with ``-v``) and return exit code 3."""
    from ganaudit import __version__
    from ganaudit.plumbing import error_line

    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"internal error: {error_line(error, with_type=True)} (please report: ganaudit {__version__}, "
          "rerun with -v for the traceback)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
