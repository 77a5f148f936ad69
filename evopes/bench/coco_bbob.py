"""BIPOP CMA-ES on the COCO ``bbob`` suite: evopes against pycma, same rules and budget.

Every instance of every function runs evopes' :class:`~evopes.BIPOP` and
pycma's BIPOP-CMA-ES (``cma.fmin2(..., restarts=9, bipop=True)``) with the
same rules: each (re)start draws x0 ~ U[-4, 4]^d, sigma_0 = 2, and the
evaluation budget per instance is 4000 d in the full run (d = 2, 3, 5, 10, 20,
15 instances: about an hour for both on a 2-core CPU) and 2000 d with
``--quick`` (d = 2, 5, 3 instances). Both stop at the final target
f - f_opt <= 1e-8. In the full run every instance of d <= 5 is run
``TRIALS[d] = 5`` times (independent seeds, COCO's repeated runs on an
instance): there a function is solved or not in a few restarts, so one run per
instance leaves the solved share of one dimension with a seed-to-seed spread
of about 0.01 (measured for both libraries), the size of the differences being
compared; runs there take seconds. d = 10 and 20 keep one run per instance
(they take most of the time). CMA-ES runs in float64 (x64 mode), as pycma does. The
padding members of a small BIPOP run reach the fitness function as NaN rows
and are skipped: COCO counts only real evaluations.

COCO problems are Python callables, so evopes' generation loop stays jitted
(compiled once per dimension and population size) and the population is
evaluated through ``jax.pure_callback``, one member at a time. The fitness
handed to evopes is f - f_opt (a constant shift: the ranking is COCO's), so
that the target test does not lose the offset f_opt in float32.

COCO observers write the standard data folders of both algorithms; cocopp
post-processes them into ECDF figures and ERT tables (the two local runs are
compared: cocopp's online archives are not used). The rows give, per function
and dimension, ERT to the final target 1e-8 (evaluations summed over the
instances divided by the number of instances that reached it; None when none
did) and ``solved``: the fraction of (instance, target) pairs reached, with
COCO's 51 targets 10^2 ... 10^-8.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evopes.bench.common import cli, save_figure, write_results
from evopes.strategies.restarts import BIPOP

# CMA-ES in float64 (x64 mode), as pycma computes: float32 stalls near 1e-7 relative
# precision, short of the 1e-8 target on ill-conditioned functions.
FLOAT64 = True
STD_INIT = 2.0
TARGET = 1e-8
TARGETS = 10.0 ** np.linspace(2, -8, 51)
#: Runs per instance in the full run (independent seeds); 1 where not listed.
TRIALS = {2: 5, 3: 5, 5: 5}


class _Current:
    """The problem the compiled callback evaluates (set before each instance)."""

    problem = None
    offset = 0.0
    trace: list = []  # (evaluations, best f - f_opt so far) per evaluation


def _evaluate(population):
    population = np.asarray(population, np.float64)
    values = np.full(len(population), np.nan)
    for index, x in enumerate(population):
        if np.isnan(x).any():  # padding of a small BIPOP run: not evaluated, not counted
            continue
        values[index] = _Current.problem(x) - _Current.offset
        _Current.trace.append(values[index])
    return values.astype(population.dtype)


@functools.cache
def _fitness_fn(dim: int):
    """A hashable fitness function per dimension: one compilation per dim and lambda."""

    def fitness(population, key):
        del key
        shape = jax.ShapeDtypeStruct(population.shape[:1], population.dtype)
        return jax.pure_callback(_evaluate, shape, population)

    fitness.__name__ = f"coco_fitness_{dim}"
    return fitness


def _f_opt(problem) -> float:
    """f(x_opt) of an unobserved problem (cocoex writes x_opt to a file in the cwd)."""
    import os
    import tempfile

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            problem._best_parameter("print")
            x_opt = np.loadtxt("._bbob_problem_best_parameter.txt")
        finally:
            os.chdir(here)
    return float(problem(np.atleast_1d(x_opt)))


def run_evopes(problem, offset: float, seed: int, budget: int) -> list[float]:
    dim = problem.dimension
    _Current.problem, _Current.offset, _Current.trace = problem, offset, []
    lower, upper = problem.lower_bounds, problem.upper_bounds
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32  # see FLOAT64

    def start(key):
        return jax.random.uniform(key, (dim,), dtype, minval=-4.0, maxval=4.0)

    BIPOP(solution=jnp.zeros(dim, dtype)).run(
        jax.random.key(seed),
        _fitness_fn(dim),
        start,
        std_init=STD_INIT,
        max_evaluations=budget,
        target_fitness=TARGET,
    )
    del lower, upper
    return list(_Current.trace)


def run_pycma(problem, offset: float, seed: int, budget: int) -> list[float]:
    import cma

    trace = []

    def f(x):
        value = problem(x) - offset
        trace.append(value)
        return value

    start = functools.partial(np.random.default_rng(seed).uniform, -4, 4, problem.dimension)
    cma.fmin2(
        f,
        start,
        STD_INIT,
        {"seed": seed + 1, "verbose": -9, "ftarget": TARGET, "maxfevals": budget},
        restarts=9,
        bipop=True,
    )
    return trace


def _summary(traces: list[list[float]]) -> tuple[float | None, float]:
    """(ERT to 1e-8, fraction of instance-target pairs reached) of one method."""
    spent, successes, reached = 0, 0, 0
    for trace in traces:
        best = np.minimum.accumulate(np.asarray(trace)) if trace else np.array([np.inf])
        hit = np.nonzero(best <= TARGET)[0]
        spent += int(hit[0]) + 1 if hit.size else len(trace)
        successes += bool(hit.size)
        reached += int(np.sum(best[-1] <= TARGETS))
    ert = spent / successes if successes else None
    return ert, reached / (len(traces) * len(TARGETS))


def _trial_share(traces: dict, dim: int, trial: int, trials: int) -> float:
    """Solved share of dimension ``dim`` (mean over functions) from one trial's runs only.

    ``run_suite`` runs the trials of an instance one after another, so trial k
    of every instance is ``traces[key][k::trials]``: one complete COCO run of the
    dimension with its own seeds. The spread over trials is the seed-to-seed
    spread of a one-run-per-instance benchmark.
    """
    keys = [key for key in traces if key.endswith(f"-d{dim}")]
    return float(np.mean([_summary(traces[key][trial::trials])[1] for key in keys]))


def run_suite(runner, suite, observer, trials: dict, seed: int, budget_per_dim: int):
    """Runs ``runner`` on every problem of ``suite``, ``trials[d]`` times each.

    Each run is a fresh problem observed by ``observer`` (COCO records repeated
    runs on an instance) with its own seed. Returns the traces by
    ``"f<function>-d<dim>"`` and the seconds spent per dimension.
    """
    traces, seconds, index = {}, {}, 0
    for problem_id in suite.ids():
        dim = int(problem_id.rpartition("_d")[2])  # ids end in _d<dimension>
        for _ in range(trials[dim]):
            problem = suite.get_problem(problem_id)
            offset = _f_opt(problem)  # before observing: this evaluation is not logged
            problem.observe_with(observer)
            start = time.perf_counter()
            trace = runner(problem, offset, seed + index, budget_per_dim * dim)
            seconds[dim] = seconds.get(dim, 0.0) + time.perf_counter() - start
            traces.setdefault(f"f{problem.id_function}-d{dim}", []).append(trace)
            problem.free()
            index += 1
    return traces, seconds


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    import cocoex

    if FLOAT64:
        jax.config.update("jax_enable_x64", True)
    dims = (2, 5) if quick else (2, 3, 5, 10, 20)
    instances = 3 if quick else 15
    budget_per_dim = 2_000 if quick else 4_000
    data = Path(out_dir) / "coco-bbob-data"
    suite_options = f"dimensions: {','.join(map(str, dims))} instance_indices: 1-{instances}"
    trials = {dim: 1 if quick else TRIALS.get(dim, 1) for dim in dims}
    raw, seconds = {}, {}
    for name, runner in (("evopes", run_evopes), ("pycma", run_pycma)):
        # COCO writes to exdata/<result_folder> under the cwd: moved to ``data`` below.
        observer = cocoex.Observer(
            "bbob", f"result_folder: coco-bbob-{name} algorithm_name: {name}"
        )
        raw[name], seconds[name] = run_suite(
            runner, cocoex.Suite("bbob", "", suite_options), observer, trials, seed,
            budget_per_dim,
        )
        del observer
        shutil.rmtree(data / name, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        shutil.move(Path("exdata") / f"coco-bbob-{name}", data / name)
        print(f"{name}: {sum(seconds[name].values()):.0f} s", flush=True)
    rows = []
    for key in raw["evopes"]:
        function, dim = (int(part[1:]) for part in key.split("-"))
        ours, theirs = _summary(raw["evopes"][key]), _summary(raw["pycma"][key])
        rows.append(
            {
                "function": function,
                "dim": dim,
                "instances": instances,
                "runs": len(raw["evopes"][key]),
                "evopes_ert": ours[0],
                "pycma_ert": theirs[0],
                "evopes_solved": round(ours[1], 4),
                "pycma_solved": round(theirs[1], 4),
            }
        )
    rows.sort(key=lambda row: (row["dim"], row["function"]))
    trial_rows = [
        {
            "dim": dim,
            "trial": trial,
            **{f"{name}_solved": round(_trial_share(raw[name], dim, trial, trials[dim]), 4)
               for name in raw},
        }
        for dim in dims
        if trials[dim] > 1
        for trial in range(trials[dim])
    ]
    write_results(
        "coco-bbob",
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "budget_per_dim": budget_per_dim,
            "target": TARGET,
            "float64": FLOAT64,
            "trials": trials,
            "trial_rows": trial_rows,
            "seconds": seconds,
        },
    )
    _plot(rows, dims, out_dir)
    _postprocess(data, Path(out_dir))
    return rows


def _postprocess(data: Path, out_dir: Path) -> None:
    """cocopp on the two data folders; keeps its ECDF figures per dimension and group.

    cocopp runs in a subprocess (it changes matplotlib's global settings) and
    writes to ``data/ppdata``; the runtime ECDFs (``pprldmany_<d>D_<group>.svg``)
    are copied to ``out_dir/coco-bbob-ecdf``.
    """
    import subprocess
    import sys

    folder = data / "ppdata"
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cocopp",
            "-o",
            str(folder),
            str(data / "evopes"),
            str(data / "pycma"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures = out_dir / "coco-bbob-ecdf"
    figures.mkdir(exist_ok=True)
    for svg in folder.glob("*/pprldmany_*D_*.svg"):
        shutil.copyfile(svg, figures / svg.name)
    shutil.rmtree(folder, ignore_errors=True)


def _plot(rows, dims, out_dir):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        sub = [row for row in rows if row["dim"] == dim]
        functions = [row["function"] for row in sub]
        ax.bar(
            np.array(functions) - 0.2,
            [row["evopes_solved"] for row in sub],
            0.4,
            label="evopes BIPOP",
        )
        ax.bar(
            np.array(functions) + 0.2,
            [row["pycma_solved"] for row in sub],
            0.4,
            label="pycma BIPOP",
        )
        ax.set_title(f"bbob d = {dim}")
        ax.set_xlabel("function")
        ax.set_ylabel("fraction of (instance, target) pairs")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, "coco-bbob", out_dir)


if __name__ == "__main__":
    cli(main)
