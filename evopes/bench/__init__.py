"""Benchmarks: evopes measured against its references, shipped with the package.

Each benchmark is one module ``evopes/bench/<name>.py`` (``-`` in the
command-line name becomes ``_``) whose docstring opens with a one-line
description and which exposes
``main(quick: bool, seed: int, out_dir: pathlib.Path) -> list[dict]``. It
writes ``<name>.json`` (a dict with a list ``rows`` of flat records and the
run's context) and ``<name>.png`` to ``out_dir``. Run one with::

    python -m evopes bench <name> [--quick] [--seed S] [--out DIR]
    python -m evopes.bench.<module> [--quick] [--seed S] [--out DIR]

from any directory. The default ``DIR`` is a per-user folder outside the
working directory (:func:`default_out_dir`), so a run from a source checkout
leaves it unchanged; the results the docs show are regenerated with
``--out benchmarks/results`` from the root of a checkout, then
``python -m evopes.bench.report``.

``common`` (timing, tables, JSON, plots) and ``report`` (results to the docs'
tables) are not benchmarks; nor is a module whose name starts with ``_``.
This file imports nothing heavy, so listing the benchmarks is instant.
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: Modules of this package that are not benchmarks.
NOT_BENCHMARKS = frozenset({"common", "report"})


def default_out_dir() -> Path:
    """Where a run writes when no ``--out`` is given: ``$XDG_DATA_HOME/evopes/bench-results``.

    ``XDG_DATA_HOME`` defaults to ``~/.local/share``; the folder is never the
    working directory or a source checkout.
    """
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "evopes" / "bench-results"


def module_name(name: str) -> str:
    """The module of a benchmark's command-line name: ``cma-vs-pycma`` -> ``cma_vs_pycma``."""
    return name.replace("-", "_")


def benchmark_names() -> list[str]:
    """Command-line names of every benchmark in the package, sorted."""
    return sorted(
        path.stem.replace("_", "-")
        for path in PACKAGE_DIR.glob("*.py")
        if not path.stem.startswith("_") and path.stem not in NOT_BENCHMARKS
    )


def summary(name: str) -> str:
    """The first line of the benchmark's module docstring, read without importing it.

    A leading ``"<name>: "`` (some docstrings start with their own name) is dropped.
    """
    source = (PACKAGE_DIR / f"{module_name(name)}.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    line = docstring.strip().splitlines()[0] if docstring.strip() else ""
    return line.removeprefix(f"{name}: ")


def run(name: str, *, quick: bool = False, seed: int = 0, out_dir: Path | str | None = None):
    """Runs benchmark ``name`` and returns its rows; prints where the results went."""
    if name not in benchmark_names():
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(benchmark_names())}")
    module = importlib.import_module(f"{__name__}.{module_name(name)}")
    return run_main(module.main, name, quick=quick, seed=seed, out_dir=out_dir)


def run_main(main, name: str, *, quick: bool, seed: int, out_dir: Path | str | None):
    """Calls a benchmark's ``main`` with ``out_dir`` defaulted; prints where the results went."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    rows = main(quick=quick, seed=seed, out_dir=out_dir)
    print(f"results of {name} in {out_dir.resolve()}")
    return rows
