"""Command line: ``python -m evopes demo`` and ``python -m evopes bench NAME``.

``bench`` runs the benchmark module ``evopes.bench.<NAME>`` shipped with the
package (names use ``-``; the module uses ``_``), from any directory, and writes
``DIR/NAME.json`` and ``DIR/NAME.png``. The default DIR is a per-user folder
(``$XDG_DATA_HOME/evopes/bench-results``, ``XDG_DATA_HOME`` defaulting to
``~/.local/share``), never the working directory: the docs' committed results
are regenerated with an explicit ``--out benchmarks/results`` from the root of
a source checkout. ``bench --help`` lists the benchmarks.
"""

from __future__ import annotations

import argparse
import sys


def _bench_epilog() -> str:
    from evopes import bench

    names = bench.benchmark_names()
    width = max(len(name) for name in names)
    lines = [f"  {name.ljust(width)}  {bench.summary(name)}" for name in names]
    return "\n".join(
        [
            "benchmarks:",
            *lines,
            "",
            f"default output folder: {bench.default_out_dir()}",
            "regenerate the docs' results from the root of a source checkout with",
            "  python -m evopes bench NAME --out benchmarks/results",
            "  python -m evopes.bench.report",
        ]
    )


def _run_bench(args: argparse.Namespace) -> int:
    from evopes import bench

    names = bench.benchmark_names()
    if args.name not in names:
        print(f"unknown benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    bench.run(args.name, quick=args.quick, seed=args.seed, out_dir=args.out)
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
    bench = commands.add_parser(
        "bench",
        help="run a benchmark and write JSON and PNG results",
        description="Runs one benchmark and writes OUT/NAME.json and OUT/NAME.png.",
        epilog=_bench_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "name", metavar="NAME", help="benchmark name, e.g. cma-vs-pycma (listed below)"
    )
    bench.add_argument("--quick", action="store_true", help="fewer seeds and smaller sizes")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: a per-user folder, shown below; "
        "use benchmarks/results in a source checkout to update the docs' results)",
    )
    bench.set_defaults(run=_run_bench)
    args = parser.parse_args(argv)
    return args.run(args)
