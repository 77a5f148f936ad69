"""Command line: ``python -m evopes demo`` and ``python -m evopes bench NAME``.

``bench`` runs the script ``benchmarks/<NAME>.py`` of a source checkout (names
use ``-``; the module uses ``_``) and writes ``DIR/NAME.json`` and
``DIR/NAME.png`` (default DIR: ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _benchmark_names() -> list[str]:
    folder = REPO_ROOT / "benchmarks"
    return sorted(
        p.stem.replace("_", "-")
        for p in folder.glob("*.py")
        if not p.stem.startswith("_") and p.stem != "common"
    )


def _run_bench(args: argparse.Namespace) -> int:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    names = _benchmark_names()
    if args.name not in names:
        print(f"unknown benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{args.name.replace('-', '_')}")
    out_dir = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results"
    module.main(quick=args.quick, seed=args.seed, out_dir=out_dir)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from evopes.demo import run_demo

    run_demo(quick=args.quick)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evopes", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a short demonstration with progress bars and a table")
    demo.add_argument("--quick", action="store_true", help="an even shorter run")
    demo.set_defaults(run=_run_demo)
    bench = commands.add_parser("bench", help="run a benchmark and write JSON and PNG results")
    bench.add_argument("name", help="benchmark name, e.g. cma-vs-pycma")
    bench.add_argument("--quick", action="store_true", help="fewer seeds and smaller sizes")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    bench.set_defaults(run=_run_bench)
    args = parser.parse_args(argv)
    return args.run(args)
