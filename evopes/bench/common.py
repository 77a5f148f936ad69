"""Shared plumbing for benchmark scripts: timing, tables, JSON and plots."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def block(tree):
    """Waits for every array in ``tree``; returns it."""
    return jax.block_until_ready(tree)


def time_alternating(
    runs: Sequence[tuple[Callable, object]],
    repeats: int,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Seconds per call of each jitted ``run(carry, key)``, timed in alternation.

    Every run is compiled and warmed up first; then the runs take turns, so that
    load on a shared machine hits them alike and their ratios stay meaningful.
    ``statistic`` (median by default) summarises each run's repeats.
    """
    key = jax.random.key(1)
    for run, carry in runs:  # compile and warm up
        block(run(carry, key))
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for index, (run, carry) in enumerate(runs):
            start = time.perf_counter()
            block(run(carry, key))
            times[index].append(time.perf_counter() - start)
    return [statistic(t) for t in times]


def compile_seconds(makers: Sequence[Callable[[], tuple]], repeats: int) -> list[float]:
    """Median seconds to trace and compile ``jax.jit(fn)(*args)``, cold, for each maker.

    ``make()`` builds a fresh ``(fn, args)`` (not timed) after JAX's caches are
    cleared, so every measurement is a first compile, as a user's first call
    is. The makers take turns; a first, untimed round pays each library's
    one-off import and tracing costs.
    """
    seconds: list[list[float]] = [[] for _ in makers]
    for repeat in range(repeats + 1):
        for index, make in enumerate(makers):
            jax.clear_caches()
            fn, args = make()
            start = time.perf_counter()
            jax.jit(fn).lower(*args).compile()
            if repeat:
                seconds[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in seconds]


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of flat records, columns in first-seen order."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_results(
    name: str, rows: list[dict], out_dir: Path, *, quick: bool, seed: int, extra: dict | None = None
) -> Path:
    """Writes ``out_dir/NAME.json`` with the rows and the run's context; prints the table.

    NAME is the command-line name (``speed_classic`` is written as ``speed-classic``).
    """
    name = cli_name(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "quick": quick,
        "seed": seed,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "machine": platform.machine(),
        "rows": rows,
        **(extra or {}),
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(format_table(rows))
    print(f"wrote {path}")
    return path


def cli_name(name: str) -> str:
    """The benchmark's name on the command line: ``-`` where the module has ``_``."""
    return name.replace("_", "-")


def save_figure(fig, name: str, out_dir: Path) -> Path:
    """Saves ``fig`` as ``out_dir/NAME.png`` (the command-line name) and closes it."""
    name = cli_name(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def cli(main: Callable[..., list[dict]], argv: Sequence[str] | None = None) -> list[dict]:
    """Lets a benchmark module run as ``python -m evopes.bench.<module>``.

    The same options and default ``--out`` as ``python -m evopes bench NAME``.
    """
    from evopes import bench

    module = main.__globals__["__spec__"].name  # also when run as __main__
    name = cli_name(module.rpartition(".")[2])
    parser = argparse.ArgumentParser(prog=f"python -m evopes bench {name}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    return bench.run_main(main, name, quick=args.quick, seed=args.seed, out_dir=args.out)
