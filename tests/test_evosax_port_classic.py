"""evosax code for the classic strategies runs after changing only its import lines.

The same code text runs twice: with evosax's imports, and with the import lines
changed to evopes. The loop is evosax's README style (``init``, then ``ask`` /
``tell`` inside ``jax.lax.scan``) on the sphere in d = 10 from x0 = 1 (f = 10),
with evosax's constructor arguments, ``Open_ES`` and ``ARS`` with all of
theirs (``use_antithetic_sampling``, ``optimizer``, ``std_schedule``,
``fitness_shaping_fn``), the rank-based six with ``fitness_shaping_fn`` (their
default, ``weights_fitness_shaping_fn``) and SimpleES, SNES and xNES with an
``optimizer``. Best fitness at the end, evosax / evopes (seed 0):
CMA_ES 1.3e-23 / 1.2e-23, Sep_CMA_ES (positional) 1.8e-32 / 0, SNES
(positional, ``sgd(0.5)``) 1.3e-23 / 1.2e-23, LM_MA_ES 1.2e-10 / 2.0e-17,
SimpleES (``sgd(1.0)``) 2.9e-3 / 2.9e-3, xNES (positional, ``adam(0.05)``)
9.9e-4 / 1.0e-3, PGPE 1.58e-6 / 1.57e-6 (also built with evosax's positional
order), Open_ES 3.9e-5 / 5.2e-5, ARS with evosax's std_schedule and
fitness_shaping_fn 3.0e-5 / 5.3e-5. Each must be inside its band
(about 100x above both, for other platforms' rounding), and evopes within 100x
of evosax (they draw different random numbers).

Below them, cheaper checks of the evosax arguments of the rank-based six: both
argument forms mean the same in both libraries, an ``optimizer`` moves the mean
by its optax update of the strategy's step (checked against the step written
out in NumPy), and what evopes cannot follow raises a ValueError naming it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("evosax")

import evopes  # noqa: E402
from evopes.shaping import centered_rank_fitness_shaping_fn, weights_fitness_shaping_fn  # noqa: E402

CODE = """
import jax
import jax.numpy as jnp
import optax
IMPORT_LINES

es = CONSTRUCTOR
params = es.default_params
state = es.init(jax.random.key(0), jnp.ones(10), params)


def generation(state, key):
    key_ask, key_tell = jax.random.split(key)
    population, state = es.ask(key_ask, state, params)
    fitness = jnp.sum(population**2, axis=1)
    state, metrics = es.tell(key_tell, population, fitness, state, params)
    return state, metrics["best_fitness"]


state, best = jax.lax.scan(generation, state, jax.random.split(jax.random.key(1), GENERATIONS))
result = float(best[-1])
"""

OPEN_ES = (
    "Open_ES(population_size=32, solution=jnp.zeros(10), use_antithetic_sampling=True, "
    "optimizer=optax.adam(optax.exponential_decay(0.1, 1, 0.995)), "
    "std_schedule=optax.exponential_decay(0.3, 1, 0.995), "
    "fitness_shaping_fn=centered_rank_fitness_shaping_fn)"
)
ARS = (
    "ARS(population_size=32, solution=jnp.zeros(10), "
    "optimizer=optax.adam(optax.exponential_decay(0.1, 1, 0.995)), "
    "std_schedule=optax.exponential_decay(0.3, 1, 0.995), "
    "fitness_shaping_fn=centered_rank_fitness_shaping_fn)"
)
PGPE_KEYWORDS = (
    "PGPE(32, jnp.zeros(10), optax.adam(0.05), centered_rank_fitness_shaping_fn)"
)
W = "weights_fitness_shaping_fn"
CASES = {
    # name: (constructor, generations, band for the best fitness)
    "CMA_ES": (f"CMA_ES(population_size=16, solution=jnp.zeros(10), fitness_shaping_fn={W})",
               300, 1e-18),
    "Sep_CMA_ES": (f"Sep_CMA_ES(16, jnp.zeros(10), {W})", 400, 1e-18),
    "SNES": (f"SNES(16, jnp.zeros(10), optax.sgd(0.5), {W})", 400, 1e-18),
    "LM_MA_ES": (f"LM_MA_ES(population_size=16, solution=jnp.zeros(10), fitness_shaping_fn={W})",
                 200, 1e-8),
    "SimpleES": ("SimpleES(population_size=16, solution=jnp.zeros(10), "
                 f"optimizer=optax.sgd(learning_rate=1.0), fitness_shaping_fn={W})", 200, 0.3),
    "xNES": (f"xNES(16, jnp.zeros(10), optax.adam(0.05), {W})", 200, 0.1),
    "PGPE": ("PGPE(population_size=32, solution=jnp.zeros(10), optimizer=optax.adam(0.05))",
             600, 1e-4),
    "Open_ES": (OPEN_ES, 800, 5e-3),
    "ARS": (ARS, 800, 5e-3),
    "PGPE_keywords": (PGPE_KEYWORDS, 600, 1e-4),
}


def import_lines(library: str, name: str) -> str:
    """The import lines of the ported code: evosax's, or the same names from evopes."""
    shapings = "centered_rank_fitness_shaping_fn, weights_fitness_shaping_fn"
    if library == "evosax":
        return (f"from evosax.algorithms import {name}\n"
                f"from evosax.core.fitness_shaping import {shapings}")
    return f"from evopes import {name}\nfrom evopes.shaping import {shapings}"


def run(library: str, case: str) -> float:
    constructor, generations, _ = CASES[case]
    name = case.split("_keywords")[0]
    source = (
        CODE.replace("IMPORT_LINES", import_lines(library, name))
        .replace("CONSTRUCTOR", constructor)
        .replace("GENERATIONS", str(generations))
    )
    namespace = {}
    exec(compile(source, f"<{library} {case}>", "exec"), namespace)
    return namespace["result"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_evosax_code_runs_with_the_import_changed_and_both_converge(name):
    reference, ported = run("evosax", name), run("evopes", name)
    band = CASES[name][2]
    assert reference < band, reference  # evosax itself solves it with these settings
    assert ported < band, ported
    assert ported <= max(100 * reference, 1e-20), (ported, reference)


# -- the rank-based six: evosax's arguments, cheaply ------------------------------------------
OPTIMIZER_CLASSES = ("SimpleES", "SNES", "xNES")
RANK_CLASSES = ("CMA_ES", "Sep_CMA_ES", "LM_MA_ES", *OPTIMIZER_CLASSES)


def forms(name: str) -> tuple[str, str]:
    """evosax's constructor of ``name`` with every argument, positional and by keyword."""
    if name in OPTIMIZER_CLASSES:
        return (f"{name}(16, jnp.zeros(10), optax.sgd(0.5), {W})",
                f"{name}(population_size=16, solution=jnp.zeros(10), "
                f"optimizer=optax.sgd(0.5), fitness_shaping_fn={W})")
    return (f"{name}(16, jnp.zeros(10), {W})",
            f"{name}(population_size=16, solution=jnp.zeros(10), fitness_shaping_fn={W})")


def build(library: str, name: str, constructor: str):
    namespace = {}
    exec(f"import jax.numpy as jnp\nimport optax\n{import_lines(library, name)}\n"
         f"es = {constructor}", namespace)
    return namespace["es"]


@pytest.mark.parametrize("name", RANK_CLASSES)
def test_both_argument_forms_mean_the_same_in_both_libraries(name):
    for library in ("evosax", "evopes"):
        positional, keywords = (build(library, name, text) for text in forms(name))
        assert type(positional).__name__ == name
        if library == "evosax":  # the positional text is evosax's order ...
            for es in (positional, keywords):
                assert es.fitness_shaping_fn.__name__ == "weights_fitness_shaping_fn"
        else:  # ... and evopes' (which compares by configuration)
            assert positional == keywords
        if name in OPTIMIZER_CLASSES:
            assert isinstance(positional.optimizer, optax.GradientTransformation)
    # evosax's own default, passed to evopes, is accepted as evopes' own
    from evosax.core.fitness_shaping import weights_fitness_shaping_fn as evosax_weights

    cls = getattr(evopes, name)
    es = cls(16, jnp.zeros(10), fitness_shaping_fn=evosax_weights, metrics_fn=None)
    assert es == cls(16, jnp.zeros(10))


def test_weights_fitness_shaping_fn_is_evosaxs():
    from evosax.core.fitness_shaping import weights_fitness_shaping_fn as evosax_weights

    params = evopes.CMA_ES(8, jnp.zeros(3)).default_params
    fitness = jnp.array([3.0, -1.0, 2.0, 7.0, 0.5, 4.0, 9.0, 1.5])
    np.testing.assert_allclose(weights_fitness_shaping_fn(None, fitness, None, params),
                               evosax_weights(None, fitness, None, params), rtol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
def one_generation(es):
    """(x0, the state after one generation from x0), compiled once per strategy."""
    params, key = es.default_params, jax.random.key(1)
    start = jnp.linspace(-1.0, 2.0, es.num_dims)
    state = es.init(jax.random.key(0), start, params)
    population, state = es.ask(key, state, params)
    fitness = jnp.sum(population**2 + population, axis=1)
    return start, es.tell(key, population, fitness, state, params)[0]


@pytest.mark.parametrize("name", OPTIMIZER_CLASSES)
def test_sgd_scales_the_strategys_own_mean_step(name):
    cls = getattr(evopes, name)
    start, plain = one_generation(cls(8, jnp.zeros(3)))
    _, sgd_1 = one_generation(cls(8, jnp.zeros(3), optax.sgd(1.0)))
    _, sgd_half = one_generation(cls(8, jnp.zeros(3), optimizer=optax.sgd(0.5)))
    # evosax's default sgd(1.0) is the paper's update exactly, bit for bit
    np.testing.assert_array_equal(sgd_1.mean, plain.mean)
    step = np.asarray(plain.mean - start)
    assert np.abs(step).min() > 1e-3
    np.testing.assert_allclose(sgd_half.mean - start, 0.5 * step, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(sgd_half.std, plain.std)  # the optimizer moves the mean only


def numpy_snes_step(population, fitness, mean, std, params):
    """Algorithm 6 of Wierstra et al. (2014) in float64: the mean's step and the new sigma."""
    s = (np.asarray(population, np.float64) - mean) / std
    u = np.asarray(params.utilities, np.float64)[np.argsort(np.argsort(np.asarray(fitness)))]
    step = float(params.eta_mean) * std * (u @ s)
    return step, std * np.exp(float(params.eta_std) / 2 * (u @ (s**2 - 1)))


def test_snes_momentum_keeps_its_state_between_generations():
    """sgd(0.5, momentum=0.9): m_1 = m_0 + 0.5 step_1, m_2 = m_1 + 0.5 (step_2 + 0.9 step_1)."""
    es = evopes.SNES(8, jnp.zeros(3), optax.sgd(0.5, momentum=0.9))
    params = es.default_params
    mean = np.linspace(-1.0, 2.0, 3)
    std = np.full(3, float(params.std_init))
    state = es.init(jax.random.key(0), jnp.asarray(mean, jnp.float32), params)
    trace = np.zeros(3)
    for generation in range(2):
        key = jax.random.key(1 + generation)
        population, state = es.ask(key, state, params)
        fitness = jnp.sum(population**2, axis=1) + population[:, 0]
        state, _ = es.tell(key, population, fitness, state, params)
        step, std = numpy_snes_step(population, fitness, mean, std, params)
        trace = step + 0.9 * trace
        mean = mean + 0.5 * trace
        np.testing.assert_allclose(state.mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.std, std, rtol=1e-5)


@pytest.mark.parametrize("name", RANK_CLASSES)
def test_what_evopes_cannot_follow_raises_a_value_error_naming_it(name):
    cls = getattr(evopes, name)
    with pytest.raises(ValueError, match=r"^fitness_shaping_fn: expected weights_fitness_shaping_fn"
                                         r" \(evosax's default\) or None; .* got <function cent"):
        cls(population_size=8, solution=jnp.zeros(3),
            fitness_shaping_fn=centered_rank_fitness_shaping_fn)
    with pytest.raises(ValueError, match=r"^metrics_fn: not supported"):
        cls(8, jnp.zeros(3), metrics_fn=lambda *args: {})
    if name in OPTIMIZER_CLASSES:
        with pytest.raises(ValueError, match=r"^optimizer: expected an optax GradientTrans"):
            cls(8, jnp.zeros(3), "adam")
    else:  # no optimizer in evosax's constructor: the third argument is fitness_shaping_fn
        with pytest.raises(ValueError, match=r"^fitness_shaping_fn: expected"):
            cls(8, jnp.zeros(3), optax.sgd(1.0))


@pytest.mark.parametrize("name", ["Open_ES", "PGPE", "ARS"])
def test_the_weights_shaping_is_refused_where_there_are_no_weights(name):
    with pytest.raises(ValueError, match=r"^fitness_shaping_fn: weights_fitness_shaping_fn reads"):
        getattr(evopes, name)(8, jnp.zeros(3), fitness_shaping_fn=weights_fitness_shaping_fn)
