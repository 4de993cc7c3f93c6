"""The command line: argument parsing, config resolution, outputs and exit codes; no logic.

Exit codes: 0 the audit passed, 1 a gate failed, 2 bad usage or bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ganaudit.errors import GanauditError

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, as for every bad input
        self.exit(EXIT_ERROR, f"error: {message} (see `ganaudit {self.prog.split()[-1]} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganaudit", description="Audit a trained image generator before release.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_check(sub.add_parser("check", help="audit a generator (or a folder of samples) against its training set"))
    report = sub.add_parser("report", help="render the HTML report again from a JSON result")
    report.add_argument("result", type=Path, help="a result.json written by `ganaudit check --json`")
    report.add_argument("--html", type=Path, required=True, help="where to write the report")
    report.add_argument("--template-dir", type=Path, help="a folder of templates overriding the shipped ones")
    sub.add_parser("embedders", help="list the available embedders")
    _add_stats(sub.add_parser("stats", help="write the FID statistics of an image set (pytorch-fid's .npz format)"))
    fetch = sub.add_parser("fetch-weights", help="download an embedder's weights (on a connected machine)")
    fetch.add_argument("name", help="embedder name, e.g. inception, dinov2-vitb14, sscd")
    fetch.add_argument("--dest", type=Path, help="folder to put it in (default: the torch hub checkpoint folder)")
    return parser


def _add_check(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to audit")
    src.add_argument("--generator", type=Path, help="checkpoint: .pt2 (torch.export), TorchScript, state_dict or .safetensors")
    src.add_argument("--samples", type=Path, help="a folder or .npz of already generated images, instead of --generator")
    src.add_argument("--train", type=Path, help="training images: a folder (class subfolders give modes) or .npz/.npy")
    src.add_argument("--holdout", type=Path, help="held-out images from the training distribution (calibrates leak detection)")
    src.add_argument("--skip-corrupt", action="store_true", default=None,
                     help="skip unreadable image files (counted in the result) instead of stopping")
    gen = p.add_argument_group("generator")
    gen.add_argument("--z-dim", type=int, help="latent size, when the checkpoint does not say")
    gen.add_argument("--arch", help="module:Class of the generator, for state_dict checkpoints")
    gen.add_argument("--arch-kwargs", help="JSON keyword arguments for --arch")
    gen.add_argument("--trust-checkpoint", action="store_true", default=None,
                     help="allow loading a full pickle (runs code from the file: only for checkpoints you trust)")
    gen.add_argument("--output-range", help="generator output range: -1,1 or 0,1 or 0,255 (default: detected)")
    gen.add_argument("--num-classes", type=int, help="conditional generators: sample class labels 0..K-1 (uniform)")
    gen.add_argument("--class-weights", type=_float_list, help="comma list of K class weights for --num-classes (normalised)")
    gen.add_argument("--truncation", type=float, metavar="PSI", help="truncation psi, for generators that take one")
    run = p.add_argument_group("run")
    run.add_argument("--embedder", help="feature network (see `ganaudit embedders`; default pixels)")
    run.add_argument("--weights", type=Path, help="weights file for the embedder")
    run.add_argument("--cache-dir", type=Path, help="embedding cache (default $XDG_CACHE_HOME/ganaudit, else ~/.cache/ganaudit)")
    run.add_argument("--no-cache", action="store_true", default=None, help="embed the training set again, without the cache")
    run.add_argument("--num-samples", type=int, help="samples to draw from the generator (default 5000)")
    run.add_argument("--seed", type=int, help="seed of the latents and of every random choice (default 0)")
    run.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    run.add_argument("--batch-size", type=int, help="images per batch (default 128)")
    run.add_argument("--alpha", type=float, help="calibrated false-positive rate of leak flags (default 0.01)")
    run.add_argument("--tta", help="test-time augmentations for copy search: comma list of flip, shift, shift-grid, "
                                   "zoom, or none (default: the copy embedder's, e.g. flip,shift)")
    run.add_argument("--copy-embedder", help="features copy search uses (default auto: the embedder's copy descriptor, "
                                             "e.g. pixels-copy for pixels; sscd for copy detection proper)")
    run.add_argument("--copy-weights", type=Path, help="weights file for --copy-embedder")
    run.add_argument("--copy-threshold", type=_copy_threshold,
                     help="auto (published threshold if the copy embedder has one, else calibrated), calibrated, "
                          "or an absolute value: cosine similarity (ip embedders) or distance (l2)")
    run.add_argument("--index", help="training-set search: flat (exact), ivf, hnsw, or auto (exact up to 1M images)")
    run.add_argument("--modes", type=int, help="cluster the training set into this many modes instead of using its labels")
    run.add_argument("--config", type=Path, help="a ganaudit.toml or pyproject.toml (default: found in the working directory)")
    _add_fd_flags(p.add_argument_group("FID and other Fréchet distances"))
    out = p.add_argument_group("outputs")
    out.add_argument("--html", type=Path, help="write the HTML report here")
    out.add_argument("--json", type=Path, help="write the JSON result here")
    out.add_argument("--junit", type=Path, help="write one JUnit test case per gate here")
    out.add_argument("--baseline", type=Path, help="a previous result.json: fail on regressions against it")
    out.add_argument("--warn-only", action="store_true", default=None, help="report failed gates but exit 0")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: on when stderr is a terminal)")
    out.add_argument("-v", "--verbose", action="store_true", help="log each stage's decisions")


def _add_fd_flags(g) -> None:
    g.add_argument("--fid-protocol", help="compute FID as pytorch-fid, clean-fid, clean-fid-legacy or torch-fidelity "
                                          "(the default) does (see README: which to compare with which table)")
    g.add_argument("--reference-stats", type=Path, help="FID against these statistics: a pytorch-fid or clean-fid .npz "
                                                        "(mu, sigma), a clean-fid KID file (feats) or an ADM reference batch")
    g.add_argument("--fd-embedders", help="comma list of feature spaces to report FD in, e.g. inception,dinov2-vitl14 "
                                          "(default: inception when any FID option is given)")
    g.add_argument("--fid-infinity", action="store_true", default=None,
                   help="also FID extrapolated to infinitely many samples (Chong & Forsyth 2020)")


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


def _flags(args: argparse.Namespace) -> dict:
    names = ("generator", "samples", "train", "holdout", "z_dim", "arch", "arch_kwargs", "trust_checkpoint",
             "output_range", "embedder", "weights", "num_samples", "seed", "device", "batch_size", "alpha",
             "modes", "index", "baseline", "html", "json", "junit", "warn_only", "progress",
             "cache_dir", "no_cache", "skip_corrupt", "num_classes", "class_weights", "truncation",
             "copy_embedder", "copy_weights", "copy_threshold",
             "fid_protocol", "reference_stats", "fd_embedders", "fid_infinity")
    flags = {name: getattr(args, name) for name in names}
    if args.tta is not None:
        flags["tta"] = () if args.tta.strip() == "none" else tuple(a.strip() for a in args.tta.split(",") if a.strip())
    return flags


def _copy_threshold(text: str) -> float | str:
    if text in ("auto", "calibrated"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, calibrated or a number; got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, like 1,1,2; got {text!r}") from None


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


def cmd_report(args: argparse.Namespace) -> int:
    from ganaudit.report.html import render_html
    from ganaudit.result import AuditResult, write_atomic

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
    from ganaudit.fd_audit import write_stats

    if args.batch_size < 1:
        raise GanauditError(f"--batch-size must be positive, got {args.batch_size}")
    info = write_stats(args.images, args.output, args.fid_protocol, args.embedder, args.weights, args.device,
                       args.batch_size, args.skip_corrupt, args.progress)
    how = f"inception, {info['protocol']} protocol" if info["protocol"] else info["embedder"]
    print(f"statistics of {info['n']} images ({how}, {info['dim']}-d): {info['path']}")
    return EXIT_PASS


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from ganaudit.weights import fetch_weights

    print(f"weights: {fetch_weights(args.name, args.dest)}")
    return EXIT_PASS


def _version() -> str:
    from ganaudit import __version__

    return f"ganaudit {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"check": cmd_check, "report": cmd_report, "embedders": cmd_embedders,
                "fetch-weights": cmd_fetch_weights, "stats": cmd_stats}
    try:
        return commands[args.command](args)
    except GanauditError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
