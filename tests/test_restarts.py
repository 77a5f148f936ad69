"""IPOP / BIPOP restarts: Rastrigin d = 10 to 1e-8, the schedules' rules, masked runs.

Both restart tests compile every run for one population of 320 members
(``compiled_population_size``), so the whole module compiles one CMA-ES loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes.strategies.cma_es import CMAES
from evopes.strategies.restarts import BIPOP, IPOP, run_params

N = 10
COMPILED = 320  # lambda_def 2^5: enough for five IPOP restarts
BUDGET = 200_000


def rastrigin(population, key):
    """10 n + sum(x^2 - 10 cos(2 pi x)), written as sum(x^2 + 20 sin(pi x)^2).

    The two are equal; the second keeps float32 precision near the optimum
    (10 n - 10 sum cos(...) cancels to ~1e-5 absolute error).
    """
    del key
    return jnp.sum(population**2 + 20 * jnp.sin(jnp.pi * population) ** 2, axis=-1)


def uniform_start(key):
    return jax.random.uniform(key, (N,), minval=-4.0, maxval=4.0)


@pytest.mark.parametrize("schedule", [IPOP, BIPOP], ids=["ipop", "bipop"])
def test_restarts_solve_rastrigin(schedule):
    restarts = schedule(solution=jnp.zeros(N), max_restarts=5, compiled_population_size=COMPILED)
    result = restarts.run(jax.random.key(1), rastrigin, uniform_start, std_init=2.0,
                          max_evaluations=BUDGET, target_fitness=1e-8)
    assert result.best_fitness <= 1e-8
    assert result.evaluations_to_target == result.evaluations <= BUDGET
    runs = result.runs
    assert runs[0].regime == "first" and runs[0].population_size == 10
    assert runs[-1].stopped_by[0] == "target"
    # Every earlier run ended on a termination indicator (a local optimum of
    # Rastrigin) or, for a BIPOP small run, on its evaluation cap (checked below).
    for run in runs[:-1]:
        assert run.stopped_by[0].startswith("stop_") or run.regime == "small", run
    assert sum(run.evaluations for run in runs) == result.evaluations
    large = [run.population_size for run in runs if run.regime != "small"]
    assert large == [10 * 2**k for k in range(len(large))]  # doubling
    if schedule is BIPOP:
        assert any(run.regime == "small" for run in runs) or len(runs) <= 2
        for index, run in enumerate(runs):
            if run.regime != "small":
                continue
            before = runs[:index]
            large_evals = sum(r.evaluations for r in before if r.regime == "large")
            small_evals = sum(r.evaluations for r in before if r.regime != "large")
            largest = max(r.population_size for r in before if r.regime == "large")
            assert small_evals < large_evals  # the budget rule chose a small run
            assert run.evaluations <= large_evals // 2
            if run.stopped_by == ("max_generations",):  # its cap: half the large budget
                assert run.evaluations > large_evals // 2 - run.population_size
            assert 10 <= run.population_size <= largest // 2
            assert 2.0 / 100 <= run.std_init <= 2.0
    else:
        assert all(run.std_init == 2.0 for run in runs)


def test_compiled_sizes_are_lambda_def_doublings():
    ipop = IPOP(solution=jnp.zeros(N))
    assert [ipop.compiled_size(size) for size in (10, 11, 20, 21, 79, 80, 81)] == [
        10, 20, 20, 40, 80, 80, 160
    ]
    with pytest.raises(ValueError, match="compiled_population_size"):
        IPOP(solution=jnp.zeros(N), compiled_population_size=16).compiled_size(17)


def test_a_masked_run_updates_exactly_like_the_small_population():
    """A strategy compiled for 20 members, with 10 active and 10 NaN, equals CMAES(10)."""
    small, padded = CMAES(10, jnp.zeros(N)), CMAES(20, jnp.zeros(N))
    params_small = small.default_params.replace(std_init=jnp.float32(0.5))
    params_padded = run_params(padded, 10, 0.5)
    for name in ("mu_eff", "c_1", "c_mu", "c_c", "c_sigma", "d_sigma"):
        assert getattr(params_padded, name) == getattr(params_small, name)
    np.testing.assert_array_equal(params_padded.weights[:10], params_small.weights)
    assert not np.any(params_padded.weights[10:])

    @jax.jit
    def one_generation_each(mean):
        state_small = small.init(jax.random.key(0), mean, params_small)
        state_padded = padded.init(jax.random.key(0), mean, params_padded)
        population, _ = padded.ask(jax.random.key(1), state_padded, params_padded)
        fitness = rastrigin(population, None)
        masked = jnp.where(jnp.arange(20) < 10, fitness, jnp.nan)
        new_small, _ = small.tell(jax.random.key(2), population[:10], fitness[:10], state_small,
                                  params_small)
        new_padded, _ = padded.tell(jax.random.key(2), population, masked, state_padded,
                                    params_padded)
        return new_small, new_padded

    new_small, new_padded = one_generation_each(jnp.linspace(-1.0, 1.0, N))
    for name in ("mean", "std", "p_sigma", "p_c", "C", "best_solution", "best_fitness"):
        np.testing.assert_allclose(getattr(new_padded, name), getattr(new_small, name),
                                   rtol=1e-6, atol=1e-7, err_msg=name)


def test_docs_examples_run():
    """The examples of docs/strategies/cma_es.md run and reach what they print."""
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "strategies" / "cma_es.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 3
    cma_example, precision_example, restart_example = {}, {}, {}
    exec(compile(blocks[0], "cma_es.md:example", "exec"), cma_example)
    assert float(cma_example["best"][-1]) < 1e-8
    exec(compile(blocks[1], "cma_es.md:float64", "exec"), precision_example)
    assert precision_example["es"].dtype == np.float64
    assert not jax.config.jax_enable_x64  # the example switches x64 off again
    exec(compile(blocks[2], "cma_es.md:restarts", "exec"), restart_example)
    assert restart_example["result"].best_fitness <= 1e-8


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"population_factor": float("nan")}, "population_factor"),
        ({"population_factor": 0.5}, "population_factor"),
        ({"population_factor": float("inf")}, "population_factor"),
        ({"max_restarts": float("inf")}, "max_restarts"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"population_size": 1}, "population_size"),
        ({"population_size": 4.5}, "population_size"),
    ],
)
def test_hostile_restart_settings_are_refused_naming_the_argument(arguments, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        IPOP(solution=jnp.zeros(3), **arguments)


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"std_init": float("nan")}, "std_init"),
        ({"std_init": float("inf")}, "std_init"),
        ({"std_init": 0.0}, "std_init"),
        ({"max_evaluations": float("nan")}, "max_evaluations"),
        ({"max_evaluations": 0}, "max_evaluations"),
        ({"target_fitness": float("nan")}, "target_fitness"),
    ],
)
def test_hostile_run_arguments_are_refused_before_any_evaluation(arguments, name):
    calls = []

    def fitness_fn(population, key):
        calls.append(1)
        return jnp.sum(population**2, axis=1)

    run_arguments = {"std_init": 1.0, "max_evaluations": 100, **arguments}
    bipop = BIPOP(solution=jnp.zeros(3))
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        bipop.run(jax.random.key(0), fitness_fn, jnp.ones(3), **run_arguments)
    assert not calls


def test_padding_members_reach_the_fitness_function_as_nan_rows():
    # Every run compiled for 16 members: lambda = 7 and 14 leave 9 and 2 padding rows.
    seen = []

    def record(population):
        seen.append(np.asarray(population))
        return np.sum(np.nan_to_num(population) ** 2, axis=1).astype(population.dtype)

    def fitness_fn(population, key):
        shape = jax.ShapeDtypeStruct(population.shape[:1], population.dtype)
        return jax.pure_callback(record, shape, population)

    ipop = IPOP(solution=jnp.zeros(3), compiled_population_size=16, max_restarts=1)
    result = ipop.run(jax.random.key(3), fitness_fn, jnp.ones(3), max_evaluations=3000)
    assert [run.population_size for run in result.runs] == [7, 14]
    padding = [int(np.sum(np.isnan(batch).all(axis=1))) for batch in seen]
    # Padding rows are NaN in every entry; real members have no NaN.
    assert all(np.all(np.isnan(b).all(axis=1) == np.isnan(b).any(axis=1)) for b in seen)
    assert sorted(set(padding)) == [2, 9]
    assert sum(16 - count for count in padding) == sum(run.evaluations for run in result.runs)
