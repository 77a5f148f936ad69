"""Restart strategies for CMA-ES: IPOP and BIPOP.

* IPOP-CMA-ES (Auger and Hansen, "A Restart CMA Evolution Strategy With
  Increasing Population Size", CEC 2005): whenever a run meets a stopping
  criterion, restart with the population size multiplied by 2.
* BIPOP-CMA-ES (Hansen, "Benchmarking a BI-Population CMA-ES on the BBOB-2009
  Function Testbed", GECCO 2009): after a first run with the default lambda_def,
  interleave two regimes. *Large* runs double the population as IPOP does,
  lambda_l = 2^k lambda_def with the initial step size. *Small* runs draw
  lambda_s = floor(lambda_def (lambda_l / (2 lambda_def))^(U_1^2)) and
  sigma_s = sigma_0 10^(-2 U_2) (U_1, U_2 uniform in [0, 1], lambda_l the last
  large population) and may use at most half the evaluations spent in large
  runs so far. The next run is small while the evaluations spent in small runs
  (the first run counted among them) are below those spent in large runs.

A run stops when any termination indicator of the strategy fires (the
``terminate`` metric: TolFun, TolX, TolXUp, ConditionCov, NoEffectAxis,
NoEffectCoord, sigma at its floor), after ``100 + 150 (n + 3)^2 / sqrt(lambda)``
generations (pycma's default ``maxiter``), when the target fitness is reached,
or when the evaluation budget is spent. Large runs count as restarts; the
driver stops after ``max_restarts`` of them.

Design: why a Python-level driver. A restart changes the population size,
and with it the shape of every array of the strategy and of the population the
user's fitness function sees. Keeping all runs inside one ``jit`` would mean
sampling a fixed maximum population and masking the unused members, so the
fitness function would evaluate the largest population (2^9 lambda_def after
nine IPOP restarts) in every generation of every run: up to 500 times the work
of the run itself. Here each run is one jitted ``lax.while_loop`` of ask /
evaluate / tell that runs on the device until a stopping criterion, and only
the restart decisions (a few per optimisation) happen in Python.

Compilations. A run is compiled for a *compiled population size*: by default
the smallest lambda_def 2^k >= lambda. IPOP and BIPOP's large runs use exactly
these sizes; a BIPOP small run (lambda_def <= lambda_s < lambda_l) samples the
next size up and masks the extra members (their fitness is replaced by NaN,
which CMA-ES weights 0; they are not counted as evaluations). The fitness
function sees a masked member as a row of NaN, so that it can skip it (a
costly simulation, or a benchmark counting every call, should). Recombination
weights and learning rates are those of lambda_s, passed in ``Params``. So
both schedules compile once per doubling, and since strategies hash by
configuration, each size compiles once per process, shared by later runs and
calls. ``compiled_population_size`` fixes one size for all runs (a single
compilation; every run then evaluates that many members per generation).
The only other difference to an unpadded run: TolFun looks back
10 + ceil(30 n / compiled size) generations instead of 10 + ceil(30 n / lambda).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from evopes import threefry
from evopes.spec import PyTree, SolutionSpec
from evopes.strategies.box import check_inside, flat_bounds
from evopes.strategies.cma_es import (
    CMAES,
    STOP_INDICATORS,
    cma_constants,
    default_population_size,
    make_params,
)
from evopes.strategies.sep_cma_es import SepCMAES, sep_constants


@dataclass(frozen=True)
class RestartRecord:
    """One run of a restart strategy.

    Attributes:
      regime: ``"first"``, ``"large"`` or ``"small"`` (IPOP runs are ``"large"``).
      population_size: lambda of the run.
      std_init: its initial step size.
      generations: generations it ran.
      evaluations: ``generations * population_size``.
      best_fitness: best fitness it found.
      stopped_by: names of the indicators that fired, or ``"target"``,
        ``"max_generations"`` (its own limit or the remaining budget).
    """

    regime: str
    population_size: int
    std_init: float
    generations: int
    evaluations: int
    best_fitness: float
    stopped_by: tuple[str, ...]


@dataclass
class RestartResult:
    """Outcome of :meth:`IPOP.run` / :meth:`BIPOP.run`.

    Attributes:
      best_solution: best solution found (a pytree shaped like ``solution``).
      best_fitness: its fitness.
      evaluations: fitness evaluations used in all.
      evaluations_to_target: evaluations until the target fitness was first
        reached (counted per generation), or None.
      runs: one record per run, in order.
    """

    best_solution: PyTree
    best_fitness: float
    evaluations: int
    evaluations_to_target: int | None
    runs: list[RestartRecord] = field(default_factory=list)


def default_max_generations(num_dims: int, population_size: int) -> int:
    """pycma's default iteration limit of one run: 100 + 150 (n + 3)^2 / sqrt(lambda)."""
    return int(100 + 150 * (num_dims + 3) ** 2 / math.sqrt(population_size))


@functools.partial(jax.jit, static_argnames=("fitness_fn",))
def run_until_stop(es, params, fitness_fn, key, mean, num_active, max_generations, target_fitness):
    """One CMA-ES run inside a ``lax.while_loop``: init, then generations until a stop.

    Only the first ``num_active`` members of each population count: the others
    get NaN fitness (weight 0 in CMA-ES), so a strategy compiled for
    ``es.population_size`` runs any smaller lambda whose weights are in
    ``params``. Stops when ``metrics["terminate"]``, after ``max_generations``,
    or once the best fitness is <= ``target_fitness``. ``fitness_fn(population,
    key)`` returns the fitness of a population pytree (minimised).

    Returns ``(state, generations, stop_flags)``, ``stop_flags`` a boolean
    vector ordered as :data:`~evopes.strategies.cma_es.STOP_INDICATORS`.
    """
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, mean, params)
    active = jnp.arange(es.population_size) < num_active
    no_stop = jnp.zeros(len(STOP_INDICATORS), bool)

    def running(carry):
        state, _, stops, generations = carry
        return (~jnp.any(stops)) & (generations < max_generations) & (
            state.best_fitness > target_fitness
        )

    def generation(carry):
        state, key, _, generations = carry
        key, ask_key, eval_key, tell_key = threefry.split(key, 4)
        population, state = es.ask(ask_key, state, params)
        evaluated = fitness_fn(_hide_inactive(population, active), eval_key)
        fitness = jnp.where(active, evaluated, jnp.nan)
        state, metrics = es.tell(tell_key, population, fitness, state, params)
        stops = jnp.stack([metrics[name] for name in STOP_INDICATORS])
        return state, key, stops, generations + 1

    carry = (state, loop_key, no_stop, jnp.asarray(0, jnp.int32))
    state, _, stops, generations = jax.lax.while_loop(running, generation, carry)
    return state, generations, stops


def _check_count(name: str, value, minimum: int) -> None:
    """ValueError naming ``name`` unless ``value`` is a whole number >= ``minimum``."""
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if not (whole and value >= minimum):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _hide_inactive(population: PyTree, active: jax.Array) -> PyTree:
    """The population with every leaf of a masked member set to NaN.

    A fitness function (or a benchmark's evaluation counter) can then tell the
    padding apart and skip it; its fitness is ignored whatever it returns.
    """

    def hide(leaf):
        mask = active.reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(mask, leaf, jnp.nan)

    return jax.tree_util.tree_map(hide, population)


def run_params(es, population_size: int, std_init: float):
    """``es.default_params`` with the weights and rates of ``population_size`` <= es's.

    Weights of the missing members are 0 (they are masked anyway).
    """
    n = es.num_dims
    constants_fn = sep_constants if isinstance(es, SepCMAES) else cma_constants
    constants = constants_fn(n, population_size)
    weights = np.zeros(es.population_size)
    weights[:population_size] = constants["weights"]
    params = make_params(n, {**constants, "weights": weights}, es.dtype)
    return params.replace(std_init=jnp.asarray(std_init, es.dtype))


class IPOP:
    """IPOP-CMA-ES: restarts with the population size multiplied by ``population_factor``.

    Args:
      solution: template pytree of one solution.
      population_size: lambda_def of the first run (default 4 + floor(3 ln n)).
      population_factor: growth of lambda per restart (2 in the paper).
      max_restarts: restarts after the first run (pycma's ``restarts=9``).
      strategy: the strategy class, ``CMAES`` or ``SepCMAES``.
      compiled_population_size: if given, every run is compiled for (and
        samples) this many members, masking the ones beyond its lambda: one
        compilation in all. By default, lambda_def 2^k (see the module notes).
      lower, upper: box constraints (scalars or pytrees like the solution),
        given to every run's strategy (see :mod:`evopes.strategies.box`);
        every start must lie inside.

    Usage::

        def start(key):  # a new random start for every run
            return jax.random.uniform(key, (10,), minval=-4.0, maxval=4.0)

        result = IPOP(solution=jnp.zeros(10)).run(
            key, fitness_fn, start, std_init=2.0, max_evaluations=100_000, target_fitness=1e-8
        )
    """

    def __init__(self, solution: PyTree, *, population_size: int | None = None,
                 population_factor: float = 2.0, max_restarts: int = 9, strategy=CMAES,
                 compiled_population_size: int | None = None, lower: PyTree = None,
                 upper: PyTree = None):
        self.spec = SolutionSpec.from_template(solution)
        # Validated here (ValueError naming lower/upper), handed to every run's strategy.
        flat_bounds(self.spec, lower, upper)
        self.lower, self.upper = lower, upper
        self.population_size = population_size or default_population_size(self.spec.num_dims)
        # ``not (a <= x)`` form: NaN fails every comparison and must be refused too.
        if not 1 <= population_factor <= 1e6:
            raise ValueError(
                f"population_factor: expected a value in [1, 1e6], got {population_factor}"
            )
        _check_count("max_restarts", max_restarts, 0)
        if population_size is not None:
            _check_count("population_size", population_size, 2)
        self.population_factor = population_factor
        self.max_restarts = int(max_restarts)
        self.strategy = strategy
        self.compiled_population_size = compiled_population_size

    def compiled_size(self, population_size: int) -> int:
        """The population a run of lambda = ``population_size`` is compiled for."""
        if self.compiled_population_size is not None:
            if population_size > self.compiled_population_size:
                raise ValueError(
                    f"compiled_population_size: expected >= {population_size} "
                    f"(a run's population size), got {self.compiled_population_size}"
                )
            return self.compiled_population_size
        if self.population_factor == 1:
            return population_size
        doublings = 0
        while self.large_size(doublings) < population_size:
            doublings += 1
        return self.large_size(doublings)

    def large_size(self, restarts: int) -> int:
        """lambda of the large run after ``restarts`` increases: lambda_def factor^restarts."""
        return int(round(self.population_size * self.population_factor**restarts))

    # -- the schedule -----------------------------------------------------------------
    def next_run(self, runs: list[RestartRecord], std_init: float, uniforms: np.ndarray):
        """(regime, population_size, std_init, evaluation cap) of the next run, or None."""
        restarts = sum(run.regime != "small" for run in runs) - 1
        if restarts >= self.max_restarts:
            return None
        return ("large", self.large_size(restarts + 1), std_init, None)

    # -- the driver -------------------------------------------------------------------
    def run(self, key: jax.Array, fitness_fn: Callable, mean, *, std_init: float = 1.0,
            max_evaluations: int, target_fitness: float = -np.inf) -> RestartResult:
        """Runs restarts until the target, the budget or ``max_restarts`` is reached.

        Args:
          key: PRNG key.
          fitness_fn: ``fitness_fn(population, key) -> (lambda,)`` fitness to
            minimise; jittable, and hashable (a plain function is), because it
            is a static argument of the compiled run. Members beyond a small
            run's lambda (padding, see the module docstring) arrive as NaN
            rows; their fitness is ignored, so skipping them is safe.
          mean: initial mean (pytree), or ``mean(key) -> pytree`` for a new
            random start at every run.
          std_init: sigma_0.
          max_evaluations: the evaluation budget.
          target_fitness: stop as soon as a fitness <= this is found.
        """
        if not 0 < std_init < float("inf"):  # NaN fails the comparison too
            raise ValueError(f"std_init: expected a finite value > 0, got {std_init}")
        _check_count("max_evaluations", max_evaluations, 1)
        if np.isnan(target_fitness):
            raise ValueError("target_fitness: expected a number (or -inf for none), got nan")
        runs: list[RestartRecord] = []
        best_fitness, best_solution, to_target = np.inf, None, None
        evaluations = 0
        plan = ("first", self.population_size, std_init, None)
        while plan is not None:
            regime, size, sigma, cap = plan
            key, run_key, mean_key, schedule_key = jax.random.split(key, 4)
            budget = max_evaluations - evaluations if cap is None else min(
                cap, max_evaluations - evaluations
            )
            limit = min(default_max_generations(self.spec.num_dims, size), budget // size)
            if limit < 1:
                break
            es = self.strategy(population_size=self.compiled_size(size), solution=self.spec,
                               lower=self.lower, upper=self.upper)
            params = run_params(es, size, sigma)
            start = mean(mean_key) if callable(mean) else mean
            # init runs traced inside the compiled run, so check the start here.
            check_inside(self.spec, start, es.lower, es.upper, "mean")
            state, generations, stops = run_until_stop(
                es, params, fitness_fn, run_key, start, jnp.asarray(size, jnp.int32),
                jnp.asarray(limit, jnp.int32), jnp.asarray(target_fitness, es.dtype),
            )
            generations, stops, run_best = jax.device_get(
                (generations, stops, state.best_fitness)
            )
            generations, run_best = int(generations), float(run_best)
            reached = run_best <= target_fitness
            fired = tuple(name for name, flag in zip(STOP_INDICATORS, stops, strict=True) if flag)
            if reached:
                fired = ("target",) + fired
            elif not fired:
                fired = ("max_generations",)
            runs.append(RestartRecord(regime, size, float(sigma), generations, generations * size,
                                      run_best, fired))
            if run_best < best_fitness:
                best_fitness, best_solution = run_best, es.get_best_solution(state)
            evaluations += generations * size
            if reached:
                to_target = evaluations
                break
            if evaluations >= max_evaluations:
                break
            uniforms = np.asarray(jax.random.uniform(schedule_key, (2,)), np.float64)
            plan = self.next_run(runs, std_init, uniforms)
        return RestartResult(best_solution, best_fitness, evaluations, to_target, runs)


class BIPOP(IPOP):
    """BIPOP-CMA-ES: interleaved large-population (IPOP) and small-population runs.

    Same arguments as :class:`IPOP`; ``max_restarts`` counts the large runs,
    as in pycma (``cma.fmin(..., restarts=9, bipop=True)``).
    """

    def next_run(self, runs: list[RestartRecord], std_init: float, uniforms: np.ndarray):
        small = sum(run.evaluations for run in runs if run.regime in ("first", "small"))
        large = sum(run.evaluations for run in runs if run.regime == "large")
        num_large = sum(run.regime == "large" for run in runs)
        if small < large:
            ratio = self.large_size(num_large) / (2 * self.population_size)
            size = max(2, int(self.population_size * ratio ** (uniforms[0] ** 2)))
            return ("small", size, std_init * 10 ** (-2 * uniforms[1]), large // 2)
        if num_large >= self.max_restarts:
            return None
        return ("large", self.large_size(num_large + 1), std_init, None)
