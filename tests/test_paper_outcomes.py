"""The PES and NRES papers' headline outcomes, reproduced with the paper settings.

Each test runs the experiment with fixed seeds and asserts the outcome the paper
reports ("re-measured": the papers' public code re-run independently). All runs are
compiled loops (``evopes.tasks.training``); compile time dominates. Settings are the
papers' unless a comment says otherwise.
"""

import jax
import numpy as np
import optax
import pytest

import evopes
from evopes.strategies.full_es import FullES
from evopes.tasks import influence_balancing as ib
from evopes.tasks import lorenz
from evopes.tasks import toy_regression as toy
from evopes.tasks.training import episodic_gradient, online_gradients, train_episodic, train_online

# -- influence balancing (PES paper, section 5.1) ----------------------------------------
# W = 1, 500 pairs (the paper's N = 1000 particles), sigma = 0.1, SGD lr 1e-4,
# 3000 iterations. With W = 1 evopes' estimator equals the paper code's (mean
# over a one-step window = sum; 1/(N sigma^2) over N = 2P particles =
# 1/(P 2 sigma^2)), so the learning rate is the paper's.


def _influence_final_theta(strategy_class, seed, **kwargs):
    es = strategy_class(
        population_size=1000,
        solution=ib.INITIAL_THETA,
        truncation_length=1,
        horizon=None,
        init_inner=ib.init_inner,
        optimizer=optax.sgd(1e-4),
        step_unlocked=False,
        **kwargs,
    )
    params = es.default_params.replace(std=0.1)
    trace = train_online(es, params, ib.INITIAL_THETA, jax.random.key(seed), ib.step, 3000)
    return float(trace.theta[-1])


def test_influence_balancing_pes_finds_the_optimum():
    # Re-measured: |theta + 1/6| < 1e-6 on 4 seeds; we allow the 1e-3.
    theta = _influence_final_theta(evopes.PES, seed=0)
    assert abs(theta - ib.OPTIMAL_THETA) < 1e-3
    assert float(ib.evaluate(np.float32(theta))) < 1e-6


@pytest.mark.parametrize("branch", ["positive", "unperturbed"])
def test_influence_balancing_tes_goes_the_wrong_way(branch):
    # Truncated ES follows the wrong-signed truncated gradient from 0.5 to ~3.26
    # (re-measured ~3.25; the influence-balancing benchmark 3.260-3.276 over 4 seeds;
    # this seed 3.265). The band is wide enough for other CPUs' rounding, narrow
    # enough that an estimator scaled by 0 (stays at 0.5) or 2 fails it. Both ways of
    # advancing the shared state (the positive branch, 2PW; an unperturbed particle,
    # the papers' 3PW) are biased alike: 3.2653 and 3.2657.
    theta = _influence_final_theta(evopes.TES, seed=0, branch=branch)
    assert 3.0 < theta < 3.5


# -- toy 2D regression (PES paper, section 5.2) --------------------------------------------
# 50 pairs, W = 10, T = 100, lock-step, Adam(1e-2, 0.99, 0.999); sigma 0.3 (TES 1.0,
# the paper's TES setting). Adam is invariant to the paper's sum-over-window
# scale, so its learning rate transfers.


def _toy_run(strategy_class, std, seed=0, num_iterations=2000):
    es = strategy_class(
        population_size=100,
        solution=toy.INITIAL_THETA,
        truncation_length=10,
        horizon=100,
        init_inner=toy.init_inner,
        optimizer=optax.adam(1e-2, b1=0.99, b2=0.999),
        step_unlocked=False,
    )
    params = es.default_params.replace(std=std)
    return train_online(
        es,
        params,
        toy.INITIAL_THETA,
        jax.random.key(seed),
        toy.step,
        num_iterations,
        evaluate=toy.meta_loss,
        eval_every=100,
    )


def test_toy_regression_pes_reaches_the_valley():
    trace = _toy_run(evopes.PES, 0.3)
    # Re-measured: L ~ 555-576 with theta0 ~ 2.72-2.76 within 2000 iterations.
    assert float(trace.evaluation[-1]) < 600.0
    assert float(trace.theta[-1, 0]) > 2.5


def test_toy_regression_truncated_methods_stall_where_the_paper_says():
    # TES (sigma = 1) re-measured at L ~ 1080-1940; the toy-regression benchmark
    # ends at 1439-1804 over 3 seeds, this seed at 1620 with theta ~ (1.26, 0.27),
    # bouncing between 1320 and 1840 once it has left L(-4, -4) = 2488. It never
    # gets below 1000 at any of the 20 evaluations, and it does move: the last ten
    # evaluations lie in the benchmark's band, widened by 15%.
    tes = _toy_run(evopes.TES, 1.0)
    assert float(np.min(tes.evaluation)) > 1000.0
    assert np.all(
        (np.asarray(tes.evaluation)[-10:] > 1200) & (np.asarray(tes.evaluation)[-10:] < 2100)
    )
    assert 0.9 < float(tes.theta[-1, 0]) < 1.6
    # TBPTT (the paper's baseline, same optimizer, W = 10) stalls at theta ~ (0.14, -0.78),
    # L ~ 2423 (re-measured; here (0.141, -0.805), 2423.2).
    tbptt = jax.jit(lambda: toy.tbptt(num_iterations=2000))()
    np.testing.assert_allclose(np.asarray(tbptt.theta[-1]), [0.14, -0.78], atol=0.05)
    assert 2400.0 < float(tbptt.meta_loss[-1]) < 2450.0


# -- Lorenz (NRES paper, section 6.1) --------------------------------------------------------
# T = 2000, W = 100, sigma = 0.04, SGD, step-unlocked; NRES / PES / TES 200 pairs with
# lr 1e-5 / 1e-5 (x0.1 after 1000 updates) / 3e-4, FullES 10 pairs lr 3e-5. The NRES
# code uses evopes' convention (time-average loss, pairs counted): learning rates
# transfer unchanged. Test loss: 100 noisy starts, evaluated every 1000 steps
# (FullES: every generation, 2000 steps).

LORENZ_TARGET = 50.0


def _lorenz_online(name, num_windows, seed=0):
    optimizer = {
        "NRES": optax.sgd(1e-5),
        "PES": optax.sgd(optax.piecewise_constant_schedule(1e-5, {1000: 0.1})),
        "TES": optax.sgd(3e-4),
    }[name]
    es = getattr(evopes, name)(
        population_size=400,
        solution=lorenz.INITIAL_THETA,
        truncation_length=100,
        horizon=lorenz.HORIZON,
        init_inner=lorenz.init_inner,
        optimizer=optimizer,
    )
    params = es.default_params.replace(std=0.04)
    trace = train_online(
        es,
        params,
        lorenz.INITIAL_THETA,
        jax.random.key(seed),
        lorenz.step,
        num_windows,
        evaluate=lorenz.test_loss,
        eval_every=10,
    )
    return np.asarray(trace.sequential_steps)[9::10], np.asarray(trace.evaluation), trace.theta[-1]


def _steps_to_target(sequential_steps, test_loss):
    below = np.nonzero(test_loss < LORENZ_TARGET)[0]
    return int(sequential_steps[below[0]]) if below.size else None


@pytest.fixture(scope="module")
def nres_steps_to_50():
    steps, test_loss, _ = _lorenz_online("NRES", 1500)
    return _steps_to_target(steps, test_loss)


def test_lorenz_nres_reaches_50(nres_steps_to_50):
    # Re-measured: NRES below 50 within 70k-100k sequential steps.
    assert nres_steps_to_50 is not None and nres_steps_to_50 <= 150_000


def test_lorenz_pes_and_full_es_are_slower_than_nres(nres_steps_to_50):
    assert nres_steps_to_50 is not None
    # Give PES and FullES exactly NRES's sequential budget: neither gets below 50
    # (re-measured: FullES needs 440k-800k steps, PES ~920k). PES does learn: from
    # 311 it falls to ~68 within NRES's 81k steps (the lorenz benchmark's PES runs
    # reach 50 after 104k-583k), so below 100 is a clear improvement that an
    # estimator scaled by 0 cannot fake.
    steps, test_loss, _ = _lorenz_online("PES", nres_steps_to_50 // 100)
    assert _steps_to_target(steps, test_loss) is None
    assert float(np.min(test_loss)) < 100.0
    es = FullES(20, lorenz.INITIAL_THETA, optimizer=optax.sgd(3e-5))
    params = es.default_params.replace(std_init=0.04)
    trace = train_episodic(
        es,
        params,
        lorenz.INITIAL_THETA,
        jax.random.key(0),
        lorenz.init_inner,
        lorenz.step,
        lorenz.HORIZON,
        nres_steps_to_50 // lorenz.HORIZON,
        evaluate=lorenz.test_loss,
    )
    assert float(np.min(trace.evaluation)) >= LORENZ_TARGET


def test_lorenz_tes_plateaus_above_50_with_a_biased_log_a():
    # TES is biased: it plateaus at 65-80 with log a ~ 3.7 (re-measured over 1M steps;
    # the lorenz benchmark: 65.7-66.7, log a 3.73-3.81 over 3 seeds). 100k sequential
    # steps, more than NRES needs; TES has plateaued by 50k (this seed: 65.0-68.5 over
    # the last 50 evaluations). The ES methods that work settle at log a ~ 2.38.
    _, test_loss, theta = _lorenz_online("TES", 1000)
    assert float(np.min(test_loss)) > LORENZ_TARGET
    assert 63.0 < float(np.median(test_loss[-20:])) < 70.0
    assert 3.6 < float(theta[0]) < 3.95


# -- gradient variance at the Lorenz initial theta (NRES paper, section 5) --------------------
# Equal unroll budget per estimate: 200 online pairs x W = 100 = 10 FullES pairs x T = 2000.
# Trace of the covariance over independent estimates (seeds). Step-unlocked: the 20
# windows after the burn-in, pooled. Lock-step: the 20 window positions of one episode,
# pooled (a lock-step update sees one position at a time). Re-measured: NRES 7.9e4 <
# FullES 4.6e5 < PES 9.0e5, lock-step 1.6x-13x above unlocked. With 32 seeds x 20
# windows (FullES: 128 seeds) the sampling error of each trace is ~10-15% (three seeds
# of this setup at 20 pairs varied by <= 12%), far below the 1.8x-10x gaps asserted.


def _trace_cov(estimates):
    estimates = np.asarray(estimates, np.float64).reshape(-1, estimates.shape[-1])
    return float(np.trace(np.cov(estimates.T)))


def _online_variance(name, unlocked):
    es = getattr(evopes, name)(
        400, lorenz.INITIAL_THETA, 100, lorenz.HORIZON, lorenz.init_inner, step_unlocked=unlocked
    )
    params = es.default_params.replace(std=0.04)
    burn_in = es.burn_in_windows
    keys = jax.random.split(jax.random.key(1), 32)
    estimates = jax.vmap(
        lambda k: online_gradients(es, params, lorenz.INITIAL_THETA, k, lorenz.step, burn_in + 20)
    )(keys)
    return _trace_cov(estimates[:, burn_in:])


@pytest.fixture(scope="module")
def variances():
    es = FullES(20, lorenz.INITIAL_THETA)
    params = es.default_params.replace(std_init=0.04)
    keys = jax.random.split(jax.random.key(2), 128)
    full = jax.vmap(
        lambda k: episodic_gradient(
            es, params, lorenz.INITIAL_THETA, k, lorenz.init_inner, lorenz.step, 2000
        )
    )(keys)
    result = {"FullES": _trace_cov(full)}
    for name in ("NRES", "PES"):
        for unlocked in (True, False):
            result[name, unlocked] = _online_variance(name, unlocked)
    return result


@pytest.mark.slow
def test_variance_nres_below_full_es_below_pes(variances):
    assert variances["NRES", True] < variances["FullES"] < variances["PES", True]


@pytest.mark.slow
def test_variance_matches_the_papers_figures(variances):
    # REFERENCE section 4 (re-measured with the papers' code): NRES 7.9e4, FullES 4.6e5,
    # PES 9.0e5. The variance benchmark (longer runs) measured 6.9e4, 3.8e5, 7.5e5:
    # 0.82-0.87 of the reference. Each trace here carries a 10-15% sampling error; a
    # factor of 1.6 either way allows both, while an estimate scaled by 2 (4x the
    # variance) or by 0 fails it.
    measured = {
        "NRES": variances["NRES", True],
        "FullES": variances["FullES"],
        "PES": variances["PES", True],
    }
    reference = {"NRES": 7.9e4, "FullES": 4.6e5, "PES": 9.0e5}
    for method, value in measured.items():
        assert reference[method] / 1.6 < value < reference[method] * 1.6, measured


@pytest.mark.slow
def test_variance_step_unlocked_below_lock_step(variances):
    assert variances["NRES", True] < variances["NRES", False]
    assert variances["PES", True] < variances["PES", False]
