"""CMA-ES: the tutorial's constants, one update against NumPy, convergence counts, guards.

Compilation dominates the cost, so the convergence tests share one jitted
function, ``run_batch``: a ``lax.scan`` of ``GENERATIONS`` generations, vmapped
over a batch of runs that differ in seed, ``Params`` (std_init), test function
and the rate of injected NaN/inf fitness, run once in a module fixture.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes.strategies.cma_es import CMA_ES, CMAES, cma_constants, stall_indicator
from evopes.strategies.sep_cma_es import SepCMAES, sep_constants

N = 10
ES = CMAES(solution=jnp.zeros(N))
LAMBDA = ES.population_size
GENERATIONS = 800
TARGET = 1e-8
SPHERE, ELLIPSOID, ROSENBROCK = 0, 1, 2
ELLIPSOID_SCALES = 10.0 ** (6 * np.arange(N) / (N - 1))
#: pycma 4.5 (default options), median evaluations to f < 1e-8 over 5 seeds
#: (REFERENCE section 8), re-measured by the cma-vs-pycma benchmark (evopes/bench/cma_vs_pycma.py).
PYCMA_EVALS = {SPHERE: 1520, ELLIPSOID: 4160, ROSENBROCK: 4840}


def objective(x, kind):
    """Sphere, ellipsoid (condition 1e6) or Rosenbrock, chosen by a traced ``kind``."""
    sphere = jnp.sum(x**2, axis=-1)
    ellipsoid = jnp.sum(jnp.asarray(ELLIPSOID_SCALES, jnp.float32) * x**2, axis=-1)
    head, tail = x[..., :-1], x[..., 1:]
    rosenbrock = jnp.sum(100 * (tail - head**2) ** 2 + (1 - head) ** 2, axis=-1)
    return jnp.stack([sphere, ellipsoid, rosenbrock])[kind]


def inject_nonfinite(key, fitness, rate):
    """Replaces a fraction ``rate`` of the fitness by NaN, +inf and -inf (a third each)."""
    u = jax.random.uniform(key, fitness.shape)
    fitness = jnp.where(u < rate, -jnp.inf, fitness)
    fitness = jnp.where(u < 2 * rate / 3, jnp.inf, fitness)
    return jnp.where(u < rate / 3, jnp.nan, fitness)


@jax.jit
def init_batch(keys, means, params):
    return jax.vmap(ES.init)(keys, means, params)


@jax.jit
def run_batch(states, keys, params, kinds, rates):
    """GENERATIONS generations of every run in the batch; returns states and traces."""

    def run_one(state, key, params, kind, rate):
        def generation(state, key):
            ask_key, tell_key, fault_key = jax.random.split(key, 3)
            population, state = ES.ask(ask_key, state, params)
            fitness = inject_nonfinite(fault_key, objective(population, kind), rate)
            state, metrics = ES.tell(tell_key, population, fitness, state, params)
            return state, (metrics["best_fitness"], metrics["num_nonfinite"], metrics["terminate"])

        return jax.lax.scan(generation, state, jax.random.split(key, GENERATIONS))

    return jax.vmap(run_one)(states, keys, params, kinds, rates)


SEEDS = 5
# (function, x0, sigma0, rate of non-finite fitness): the REFERENCE section 8 setups,
# then sphere and ellipsoid again with 10% NaN/+inf/-inf fitness.
SETUPS = [
    (SPHERE, 3.0, 1.0, 0.0),
    (ELLIPSOID, 3.0, 1.0, 0.0),
    (ROSENBROCK, 0.0, 0.5, 0.0),
    (SPHERE, 3.0, 1.0, 0.1),
    (ELLIPSOID, 3.0, 1.0, 0.1),
]


def first_success(best_trace):
    """Evaluations until best fitness < TARGET for each run (None if never)."""
    hits = np.asarray(best_trace) < TARGET
    return [int((np.argmax(row) + 1) * LAMBDA) if row.any() else None for row in hits]


@pytest.fixture(scope="module")
def batch():
    rows = [(setup, seed) for setup in SETUPS for seed in range(SEEDS)]
    kinds = jnp.array([setup[0] for setup, _ in rows])
    means = jnp.array([np.full(N, setup[1]) for setup, _ in rows], jnp.float32)
    params = jax.vmap(lambda std: ES.default_params.replace(std_init=std))(
        jnp.array([setup[2] for setup, _ in rows], jnp.float32)
    )
    rates = jnp.array([setup[3] for setup, _ in rows], jnp.float32)
    keys = jax.random.split(jax.random.key(2024), len(rows))
    states = init_batch(keys, means, params)
    states, (best, nonfinite, terminate) = run_batch(states, keys, params, kinds, rates)
    return dict(rows=rows, states=states, best=np.asarray(best), nonfinite=np.asarray(nonfinite),
                terminate=np.asarray(terminate))


# -- constants ---------------------------------------------------------------------------
def test_default_constants_follow_the_tutorial_and_match_pycma():
    n, lam = 10, 10
    constants = cma_constants(n, lam)
    assert LAMBDA == 4 + math.floor(3 * math.log(N)) == 10
    mu = lam // 2
    w = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
    mu_eff = w[:mu].sum() ** 2 / (w[:mu] ** 2).sum()
    mu_eff_minus = w[mu:].sum() ** 2 / (w[mu:] ** 2).sum()
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (0.25 + mu_eff + 1 / mu_eff - 2) / ((n + 2) ** 2 + mu_eff))
    alpha = min(1 + c_1 / c_mu, 1 + 2 * mu_eff_minus / (mu_eff + 2), (1 - c_1 - c_mu) / (n * c_mu))
    weights = np.where(w >= 0, w / w[w > 0].sum(), alpha * w / -w[w < 0].sum())
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    expected = dict(
        weights=weights,
        mu_eff=mu_eff,
        c_1=c_1,
        c_mu=c_mu,
        c_c=(4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n),
        c_sigma=c_sigma,
        d_sigma=1 + 2 * max(0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma,
        chi_n=math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2)),
        lazy_gap=0.5 / (n * (c_1 + c_mu)),
    )
    for name, value in expected.items():
        np.testing.assert_allclose(constants[name], value, rtol=1e-12, err_msg=name)
    # The same numbers as pycma 4.5 for n = 10 (CMAEvolutionStrategy(...).sp).
    np.testing.assert_allclose(
        constants["weights"],
        [0.45627265, 0.2707531, 0.16223112, 0.08523355, 0.02550959,
         -0.08001261, -0.22176416, -0.34455494, -0.45286409, -0.54974992],
        atol=1e-8,
    )
    np.testing.assert_allclose(
        [constants["mu_eff"], constants["c_1"], constants["c_mu"], constants["c_c"]],
        [3.1672992814107017, 0.015283824524751714, 0.02355177665041747, 0.29499038303562225],
        rtol=1e-12,
    )
    # Positive weights sum to one (Eq. 53); negative ones to -min(alpha) = -1.65 here.
    assert np.isclose(constants["weights"][:mu].sum(), 1.0)
    assert np.isclose(constants["weights"][mu:].sum(), -alpha)


def test_sep_constants_scale_learning_rates_by_n_plus_2_over_3():
    n, lam = 1000, 24
    full, sep = cma_constants(n, lam), sep_constants(n, lam)
    assert np.isclose(sep["c_1"], full["c_1"] * (n + 2) / 3)
    assert np.isclose(sep["c_mu"], full["c_mu"] * (n + 2) / 3)
    assert np.all(sep["weights"][: lam // 2] == full["weights"][: lam // 2])
    assert np.all(sep["weights"][lam // 2 :] == 0)


def test_stall_indicator_threshold_and_bias_correction():
    params = ES.default_params
    n, c_sigma, chi_n = N, float(params.c_sigma), float(params.chi_n)
    threshold = (1.4 + 2 / (n + 1)) * chi_n
    # At g = 0 the bias correction is sqrt(1 - (1 - c_sigma)^2) = sqrt(c_sigma (2 - c_sigma)).
    correction = math.sqrt(1 - (1 - c_sigma) ** 2)
    for scale, expected in [(0.99, 1.0), (1.01, 0.0)]:
        p_sigma = jnp.zeros(n).at[0].set(scale * threshold * correction)
        assert float(stall_indicator(p_sigma, 0, n, params)) == expected
    # After many generations the correction is 1.
    p_sigma = jnp.zeros(n).at[3].set(0.99 * threshold)
    assert float(stall_indicator(p_sigma, 1000, n, params)) == 1.0
    assert float(stall_indicator(p_sigma * 1.02, 1000, n, params)) == 0.0


# -- one update against an independent NumPy implementation ------------------------------
def numpy_tell(x, f, m, sigma, p_sigma, p_c, C, g, const):
    """Eqs. (41)-(47) of the tutorial in float64, C^{-1/2} by eigh."""
    n, lam = x.shape[1], x.shape[0]
    w = const["weights"]
    order = np.argsort(f, kind="stable")
    y = (x[order] - m) / sigma
    eigenvalues, B = np.linalg.eigh(C)
    C_inv_sqrt = B @ np.diag(eigenvalues**-0.5) @ B.T
    y_w = w[: lam // 2] @ y[: lam // 2]
    m_new = m + sigma * y_w
    mu_eff, cs, ds, cc = const["mu_eff"], const["c_sigma"], const["d_sigma"], const["c_c"]
    p_sigma = (1 - cs) * p_sigma + math.sqrt(cs * (2 - cs) * mu_eff) * C_inv_sqrt @ y_w
    sigma_new = sigma * math.exp(cs / ds * (np.linalg.norm(p_sigma) / const["chi_n"] - 1))
    h = float(
        np.linalg.norm(p_sigma) / math.sqrt(1 - (1 - cs) ** (2 * (g + 1)))
        < (1.4 + 2 / (n + 1)) * const["chi_n"]
    )
    p_c = (1 - cc) * p_c + h * math.sqrt(cc * (2 - cc) * mu_eff) * y_w
    mahalanobis2 = np.sum((y @ C_inv_sqrt) ** 2, axis=1)
    w_circ = np.where(w >= 0, w, w * n / mahalanobis2)
    c1, cmu = const["c_1"], const["c_mu"]
    C_new = (1 + c1 * (1 - h) * cc * (2 - cc) - c1 - cmu * w.sum()) * C + c1 * np.outer(p_c, p_c)
    C_new += cmu * sum(wi * np.outer(yi, yi) for wi, yi in zip(w_circ, y, strict=True))
    return m_new, sigma_new, p_sigma, p_c, C_new, h


#: A tiny strategy (n = 4, lambda = 6) and one jitted tell, shared by the update tests.
SMALL = CMAES(population_size=6, solution=jnp.zeros(4))
TELL = jax.jit(lambda es, *args: es.tell(*args))


@pytest.mark.parametrize("stalled", [False, True])
def test_one_update_matches_numpy_reference(stalled):
    n, es = 4, SMALL
    const = cma_constants(n, 6)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(n, n))
    C = A @ A.T / n + 0.5 * np.eye(n)
    eigenvalues, B = np.linalg.eigh(C)
    m, sigma = rng.normal(size=n), 0.7
    p_sigma = rng.normal(size=n) * (10.0 if stalled else 0.3)
    p_c = rng.normal(size=n) * 0.1
    x = m + sigma * rng.normal(size=(6, n)) @ (B * np.sqrt(eigenvalues)).T
    f = rng.normal(size=6)

    params = es.default_params.replace(lazy_gap=jnp.float32(1e9))  # keep B, D: no refresh
    state = es.init(jax.random.key(0), jnp.asarray(m, jnp.float32), params)
    state = state.replace(
        std=jnp.float32(sigma), p_sigma=jnp.asarray(p_sigma, jnp.float32),
        p_c=jnp.asarray(p_c, jnp.float32), C=jnp.asarray(C, jnp.float32),
        B=jnp.asarray(B, jnp.float32), D=jnp.asarray(np.sqrt(eigenvalues), jnp.float32),
        sqrt_C=jnp.asarray((B * np.sqrt(eigenvalues)) @ B.T, jnp.float32),
        generation_counter=jnp.int32(3),
    )
    new, metrics = TELL(es, jax.random.key(1), jnp.asarray(x, jnp.float32),
                        jnp.asarray(f, jnp.float32), state, params)
    m_ref, sigma_ref, ps_ref, pc_ref, C_ref, h_ref = numpy_tell(
        x, f, m, sigma, p_sigma, p_c, C, 3, const
    )
    assert float(metrics["h_sigma"]) == h_ref == (0.0 if stalled else 1.0)
    # float32 against float64: relative errors of a few 1e-6 from the products.
    np.testing.assert_allclose(new.mean, m_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.std, sigma_ref, rtol=1e-5)
    np.testing.assert_allclose(new.p_sigma, ps_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.p_c, pc_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.C, C_ref, rtol=1e-4, atol=1e-5)


def test_all_nonfinite_generation_leaves_the_distribution_unchanged():
    params = SMALL.default_params
    state = SMALL.init(jax.random.key(0), jnp.ones(4), params)
    population = jax.random.normal(jax.random.key(1), (6, 4))
    fitness = jnp.array([jnp.nan, jnp.inf, -jnp.inf] * 2)
    new, metrics = TELL(SMALL, jax.random.key(2), population, fitness, state, params)
    for name in ("mean", "std", "p_sigma", "p_c", "C", "B", "D", "best_fitness"):
        np.testing.assert_array_equal(getattr(new, name), getattr(state, name), err_msg=name)
    assert int(metrics["num_nonfinite"]) == 6
    assert int(new.generation_counter) == 1


# -- convergence, faults and long runs (one compiled batch) ------------------------------
@pytest.mark.parametrize("kind", [SPHERE, ELLIPSOID, ROSENBROCK],
                         ids=["sphere", "ellipsoid", "rosenbrock"])
def test_convergence_counts_within_20_percent_of_pycma(batch, kind):
    rows = [i for i, ((k, *_, rate), _) in enumerate(batch["rows"]) if k == kind and rate == 0]
    evals = first_success(batch["best"][rows])
    if kind == ROSENBROCK:
        # 10-D Rosenbrock has a local minimum, f = 3.987 near x_1 = -1, that
        # CMA-ES with default lambda settles in now and then: pycma did in 3 of
        # 40 seeded runs from this start. One such run of five is CMA-ES
        # behaviour (1 - 0.925^5 = 32% of seed sets have one); two would be
        # unusual (5%). A run that fails must be at that local minimum.
        failed = [i for i, e in zip(rows, evals, strict=True) if e is None]
        assert len(failed) <= 1, evals
        for i in failed:
            assert abs(float(batch["best"][i, -1]) - 3.987) < 0.01, float(batch["best"][i, -1])
            assert float(batch["states"].mean[i, 0]) < -0.9
        evals = [e for e in evals if e is not None]
    assert None not in evals, evals
    median = float(np.median(evals))
    assert abs(median / PYCMA_EVALS[kind] - 1) <= 0.2, (median, evals)


def test_converges_with_ten_percent_nonfinite_fitness(batch):
    rows = [i for i, ((*_, rate), _) in enumerate(batch["rows"]) if rate > 0]
    evals = first_success(batch["best"][rows])
    assert None not in evals, evals
    # About 10% of the members were NaN/+inf/-inf (binomial over 800 x 10 draws per
    # run: the standard deviation of the fraction is 0.003, so 0.09-0.11 is > 3 sigma).
    fraction = batch["nonfinite"][rows].mean() / LAMBDA
    assert 0.09 < fraction < 0.11
    assert np.all(np.isfinite(np.asarray(batch["states"].mean)[rows]))


def test_termination_fires_after_convergence(batch):
    # Every clean run reaches a stopping criterion (TolFun/TolX) within the chunk.
    clean = [i for i, ((*_, rate), _) in enumerate(batch["rows"]) if rate == 0]
    assert batch["terminate"][clean, -1].all()
    first_stop = batch["terminate"][clean].argmax(axis=1)
    first_hit = (batch["best"][clean] < TARGET).argmax(axis=1)
    assert np.all(first_stop > first_hit)  # never before f < 1e-8 on these functions


def test_twenty_thousand_generations_past_convergence_stay_finite():
    """Sphere from 3 * ones in float32: converged after ~200 generations, then 20,000 more."""
    params = ES.default_params

    @jax.jit
    def run(key):
        def generation(carry, key):
            state, finite_so_far = carry
            population, state = ES.ask(key, state, params)
            state, metrics = ES.tell(key, population, objective(population, SPHERE), state, params)
            finite = jnp.all(jnp.stack([
                jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state)
                if jnp.issubdtype(leaf.dtype, jnp.floating)
            ]))
            return (state, finite_so_far & finite), metrics["best_fitness"]

        state = ES.init(key, jnp.full(N, 3.0), params)
        carry = (state, jnp.array(True))
        return jax.lax.scan(generation, carry, jax.random.split(key, 20_300))

    (state, always_finite), best = run(jax.random.key(7))
    first_hit = int(np.argmax(np.asarray(best) < TARGET))
    assert 0 < first_hit < 300  # converged, then ran > 20,000 generations past it
    assert state.C.dtype == jnp.float32
    assert bool(always_finite)  # every float leaf finite after every generation
    assert float(state.std) > 0 and float(state.best_fitness) < TARGET


# -- lazy eigendecomposition -------------------------------------------------------------
def test_lazy_eigendecomposition_skips_generations():
    n, generations = 100, 12
    es = CMAES(solution=jnp.zeros(n))
    params = es.default_params
    gap = float(params.lazy_gap)
    assert 5 < gap < 6  # lambda = 17 at n = 100: a refresh every sixth generation

    @jax.jit
    def run(state, key):
        def generation(state, key):
            population, state = es.ask(key, state, params)
            state, _ = es.tell(key, population, jnp.sum(population**2, axis=1), state, params)
            return state, (state.eigen_generation, state.B)

        return jax.lax.scan(generation, state, jax.random.split(key, generations))

    state = es.init(jax.random.key(0), jnp.ones(n), params)
    state, (eigen_generation, Bs) = run(state, jax.random.key(1))
    assert int(state.num_eigen_refreshes) == 2
    np.testing.assert_array_equal(eigen_generation, [0] * 5 + [6] * 6 + [12])
    for generation in range(1, 5):  # B untouched between refreshes
        np.testing.assert_array_equal(Bs[generation], Bs[0])
    assert not np.array_equal(Bs[5], Bs[4])
    # At a refresh, B diag(D^2) B^T reproduces C.
    rebuilt = (state.B * state.D**2) @ state.B.T
    np.testing.assert_allclose(rebuilt, state.C, atol=1e-5 * float(jnp.max(jnp.abs(state.C))))


# -- JAX contract ------------------------------------------------------------------------
def test_equal_instances_share_compiled_code():
    traces = []

    @jax.jit
    def step(es, state, key):
        traces.append(1)
        population, state = es.ask(key, state, es.default_params)
        return es.tell(key, population, jnp.sum(population**2, axis=1), state, es.default_params)[0]

    first, second = CMAES(solution=jnp.zeros(3)), CMAES(solution=jnp.zeros(3))
    assert first is not second and first == second and hash(first) == hash(second)
    state = first.init(jax.random.key(0), jnp.ones(3), first.default_params)
    step(first, state, jax.random.key(1))
    step(second, state, jax.random.key(1))
    assert len(traces) == 1
    assert issubclass(CMA_ES, CMAES)  # evosax's constructor on CMAES


def test_pytrees_round_trip_exactly_and_maximize_mirrors_minimize():
    solution = {"layer": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, "scale": jnp.zeros(())}
    mean = {"layer": {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.array([0.1, -0.2, 0.3])},
            "scale": jnp.array(2.5)}
    minimize, maximize = CMAES(solution=solution), CMAES(solution=solution, maximize=True)
    assert minimize.num_dims == 10

    def fitness_of(population):
        leaves = jax.tree_util.tree_leaves(population)
        return sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in leaves)

    @jax.jit
    def run(key):
        def one(es, sign):
            params = es.default_params
            state = es.init(key, mean, params)

            def generation(state, key):
                population, state = es.ask(key, state, params)
                return es.tell(key, population, sign * fitness_of(population), state, params)

            state, metrics = jax.lax.scan(generation, state, jax.random.split(key, 5))
            population, _ = es.ask(key, state, params)
            return state, metrics, population

        return one(minimize, 1.0), one(maximize, -1.0)

    state = minimize.init(jax.random.key(0), mean, minimize.default_params)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), minimize.get_mean(state), mean))
    (state_min, metrics_min, population), (state_max, metrics_max, _) = run(jax.random.key(3))
    assert jax.tree_util.tree_structure(population) == jax.tree_util.tree_structure(solution)
    assert population["layer"]["w"].shape == (LAMBDA, 2, 3)
    # Flattening the population pytree gives back the flat samples bit for bit.
    flat = minimize.spec.ravel_population(population, LAMBDA)
    np.testing.assert_array_equal(minimize.spec.unravel_population(flat)["layer"]["w"],
                                  population["layer"]["w"])
    structure = jax.tree_util.tree_structure(solution)
    assert jax.tree_util.tree_structure(metrics_min["best_solution"]) == structure
    for name in ("mean", "C", "std", "best_solution"):
        np.testing.assert_array_equal(getattr(state_min, name), getattr(state_max, name))
    np.testing.assert_array_equal(metrics_min["best_fitness"], -metrics_max["best_fitness"])


def test_invalid_inputs_raise_value_errors():
    params = ES.default_params
    with pytest.raises(ValueError, match="std_init"):
        ES.init(jax.random.key(0), jnp.zeros(N), params.replace(std_init=jnp.float32(0.0)))
    with pytest.raises(ValueError, match="weights"):
        ES.init(jax.random.key(0), jnp.zeros(N), params.replace(weights=jnp.ones(3)))
    state = ES.init(jax.random.key(0), jnp.zeros(N), params)
    population, state = ES.ask(jax.random.key(1), state, params)
    with pytest.raises(ValueError, match="fitness"):
        ES.tell(jax.random.key(2), population, jnp.zeros(LAMBDA + 1), state, params)
    with pytest.raises(ValueError, match="solution"):
        CMAES(solution=None)


# -- SepCMAES ----------------------------------------------------------------------------
def test_sep_cma_es_solves_the_separable_ellipsoid_and_stays_linear_in_memory():
    es = SepCMAES(solution=jnp.zeros(N))
    params = es.default_params

    @jax.jit
    def run(keys):
        def one(key):
            state = es.init(key, jnp.full(N, 3.0), params)

            def generation(state, key):
                population, state = es.ask(key, state, params)
                fitness = objective(population, ELLIPSOID)
                state, metrics = es.tell(key, population, fitness, state, params)
                return state, metrics["best_fitness"]

            return jax.lax.scan(generation, state, jax.random.split(key, 600))

        return jax.vmap(one)(keys)

    states, best = run(jax.random.split(jax.random.key(0), 3))
    evals = first_success(best)
    # Separable problems are what sep-CMA learns fastest: the diagonal is the whole
    # covariance and the rates are (n + 2) / 3 = 4x larger, so it beats full CMA-ES (4160).
    assert None not in evals and np.median(evals) < PYCMA_EVALS[ELLIPSOID], evals

    big = SepCMAES(solution=jnp.zeros(100_000))
    state = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros(100_000), big.default_params)
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(state)]
    assert max(sizes) <= 100_000 + big.history_length  # O(n): no n x n matrix anywhere
