"""end-to-end: ``ganaudit check`` on the fixtures, with a cold and a warm embedding cache.

Runs, each in a fresh process on the CPU::

    python -m ganaudit check --generator fixtures/generators/dcgan.pt2 \\
        --train fixtures/data/train --holdout fixtures/data/holdout \\
        --num-samples 1000 --device cpu --no-progress --json RESULT [--cache-dir DIR]

first with an empty cache directory (cold), then again with the same one (warm). When the CLI
has no ``--cache-dir`` flag, both runs say so and compute every embedding. ``XDG_CACHE_HOME``
points into a fresh temporary folder either way, so a cache in the default place can neither
help the cold run nor be left behind (``TORCH_HOME`` keeps pointing at the usual weights).

Reported: the per-stage seconds from the result's ``timings``, the process's wall time
(interpreter start and imports included), its peak resident memory (``wait4``), exit code
and verdict. A failed gate (exit 1) is a normal outcome of the audit, not of the benchmark.

    python benchmarks/end_to_end.py --out benchmarks/results/end_to_end.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (REPO, default_out, format_table, gb, machine_info, machine_line, make_parser, run_command,
                     secs, wait_for_quiet, write_json)

GENERATOR = "fixtures/generators/dcgan.pt2"
TRAIN, HOLDOUT = "fixtures/data/train", "fixtures/data/holdout"
FULL = {"num_samples": 1000}
QUICK = {"num_samples": 100}


def wait_for_fixtures(minutes: float, generator: str) -> float:
    """Poll once a minute until the fixture files exist; the seconds waited."""
    start = time.monotonic()
    paths = [REPO / generator, REPO / TRAIN, REPO / HOLDOUT]
    while not all(p.exists() for p in paths):
        if time.monotonic() - start >= minutes * 60:
            missing = ", ".join(str(p) for p in paths if not p.exists())
            raise SystemExit(f"missing fixture(s): {missing}; build them with `bash fixtures/make_all.sh`")
        print("waiting for the fixtures (bash fixtures/make_all.sh) ...", flush=True)
        time.sleep(60)
    return time.monotonic() - start


def has_cache_dir_flag() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "ganaudit", "check", "--help"], cwd=REPO,
                               capture_output=True, text=True).stdout
    return "--cache-dir" in help_text


def check_command(generator: str, num_samples: int, json_path: Path, cache_dir: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "ganaudit", "check", "--generator", generator, "--train", TRAIN,
           "--holdout", HOLDOUT, "--num-samples", str(num_samples), "--device", "cpu", "--no-progress",
           "--json", str(json_path)]
    return cmd + (["--cache-dir", str(cache_dir)] if cache_dir is not None else [])


def run_pair(generator: str, num_samples: int, use_cache_flag: bool, tmp: Path) -> dict:
    """The cold run, then the warm one, sharing one cache directory."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"),
               TORCH_HOME=os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch")))
    cache_dir = tmp / "cache" if use_cache_flag else None
    runs = {}
    for name in ("cold", "warm"):
        json_path = tmp / f"{name}.json"
        cmd = check_command(generator, num_samples, json_path, cache_dir)
        record = run_command(cmd, env=env)
        record["command"] = " ".join(["python", *cmd[1:]]).replace(str(tmp), "$TMP")
        if record["exit_code"] not in (0, 1) or not json_path.exists():
            raise SystemExit(f"ganaudit check failed (exit {record['exit_code']}):\n{record['stderr_tail']}")
        result = json.loads(json_path.read_text())
        record.update(timings=result["timings"], verdict=result["verdict"])
        runs[name] = record
        print(f"  [{name}] {record['wall_s']:.2f} s wall, exit {record['exit_code']}, verdict {result['verdict']}")
    return runs


def tables(params: dict, res: dict, info: dict) -> str:
    cold, warm = res["runs"]["cold"], res["runs"]["warm"]
    cache = "--cache-dir given" if res["cache_dir_flag"] else "no --cache-dir flag in this CLI: both runs embed everything"
    title = (f"end-to-end: ganaudit check, {params['generator']}, --num-samples {params['num_samples']}, CPU; {cache}\n"
             f"{machine_line(info)}")
    stages = list(dict.fromkeys([*cold["timings"], *warm["timings"]]))
    rows = [[f"stage: {s}", _s(cold["timings"].get(s)), _s(warm["timings"].get(s)),
             _ratio(warm["timings"].get(s), cold["timings"].get(s))] for s in stages]
    rows += [["process wall (with imports)", secs(cold["wall_s"]), secs(warm["wall_s"]),
              _ratio(warm["wall_s"], cold["wall_s"])],
             ["peak RSS", gb(cold["peak_rss_bytes"]), gb(warm["peak_rss_bytes"]), ""],
             ["exit code / verdict", f"{cold['exit_code']} / {cold['verdict']}", f"{warm['exit_code']} / {warm['verdict']}",
              ""]]
    return format_table(title, ["", "cold", "warm", "warm / cold"], rows)


def _s(x) -> str:
    return "-" if x is None else secs(x)


def _ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, repeats=1)
    parser.add_argument("--wait-fixtures", type=float, default=0, metavar="MINUTES",
                        help="wait up to this long for the fixture files to appear (default: do not wait)")
    parser.add_argument("--generator", default=GENERATOR, help=f"generator checkpoint (default {GENERATOR})")
    args = parser.parse_args(argv)
    params = {**(QUICK if args.quick else FULL), "generator": args.generator}
    waited_fixtures = wait_for_fixtures(args.wait_fixtures, args.generator)
    waited = wait_for_quiet(args.wait_quiet)
    flag = has_cache_dir_flag()
    with tempfile.TemporaryDirectory(prefix="ganaudit-e2e-") as tmp:
        res = {"cache_dir_flag": flag, "waited_for_fixtures_s": round(waited_fixtures),
               "runs": run_pair(args.generator, params["num_samples"], flag, Path(tmp))}
    info = machine_info()
    table = tables(params, res, info)
    print(table)
    write_json(args.out or default_out("end_to_end", args.quick), "end-to-end", params, res, table, waited)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
