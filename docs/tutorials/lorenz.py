"""Fitting a chaotic simulator: NRES vs FullES on the Lorenz system.

Run: ``python docs/tutorials/lorenz.py`` (paper settings; a few minutes on a
laptop CPU).
"""

import jax
import jax.numpy as jnp
import optax

import evopes
from evopes.strategies.full_es import FullES
from evopes.tasks import lorenz

STD = 0.04
W = 100  # truncation window
T = lorenz.HORIZON  # 2000 steps per episode
TARGET = 50.0
TEST_STARTS = lorenz.test_starts()  # 100 noisy starts, drawn once


@jax.jit
def test_loss(theta):
    return lorenz.test_loss(theta, TEST_STARTS)


def train_nres(key, num_windows, eval_every=10):
    """NRES, 200 pairs, step-unlocked: each pair starts at a random multiple of W in [0, T)."""
    es = evopes.NRES(
        population_size=400,
        solution=lorenz.INITIAL_THETA,  # (log a, log r) = (3.116, 3.7)
        truncation_length=W,
        horizon=T,
        init_inner=lorenz.init_inner,
        optimizer=optax.sgd(1e-5),
    )
    params = es.default_params.replace(std=STD)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, lorenz.INITIAL_THETA, params)

    def one_window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            lorenz.step, population, es.get_inner_state(state), unroll_key, W
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, metrics

    @jax.jit
    def block(state, keys):
        state, metrics = jax.lax.scan(one_window, state, keys)
        return state, metrics["sequential_steps"][-1], metrics["burn_in"][-1]

    curve = []
    for keys in jax.random.split(loop_key, num_windows).reshape(-1, eval_every):
        state, sequential_steps, burn_in = block(state, keys)
        # The first T / W = 20 windows are the burn-in: estimates are computed but not
        # applied, until every particle has restarted from a genuine episode start.
        curve.append((int(sequential_steps), float(test_loss(es.get_mean(state))), bool(burn_in)))
    return es.get_mean(state), curve


def train_full_es(key, num_generations):
    """FullES, 10 pairs: every member runs a whole episode; same steps per update as NRES."""
    es = FullES(population_size=20, solution=lorenz.INITIAL_THETA, optimizer=optax.sgd(3e-5))
    params = es.default_params.replace(std_init=STD)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, lorenz.INITIAL_THETA, params)

    @jax.jit
    def generation(state, key):
        ask_key, episode_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        # Fresh episodes for all members (pair-shared keys; the Lorenz start is fixed anyway).
        inner = jax.vmap(lorenz.init_inner)(evopes.pair_keys(episode_key, es.num_pairs))
        _, losses, _ = evopes.unroll(lorenz.step, population, inner, episode_key, T)
        fitness = jnp.mean(losses, axis=0)  # the time-average loss, as for NRES
        state, _ = es.tell(tell_key, population, fitness, state, params)
        return state, test_loss(es.get_mean(state))

    curve = []
    for index, key in enumerate(jax.random.split(loop_key, num_generations)):
        state, loss = generation(state, key)
        curve.append(((index + 1) * T, float(loss), False))
    return es.get_mean(state), curve


def steps_to_target(curve):
    return next((steps for steps, loss, _ in curve if loss < TARGET), None)


def main(quick: bool = True) -> dict:
    num_windows = 1200 if quick else 2000  # 120k / 200k sequential steps
    num_generations = 60 if quick else 300  # 120k / 600k sequential steps
    print(f"test loss at the initial theta: {float(test_loss(lorenz.INITIAL_THETA)):.1f}")
    results = {}
    for name, (theta, curve) in (
        ("NRES", train_nres(jax.random.key(0), num_windows)),
        ("FullES", train_full_es(jax.random.key(0), num_generations)),
    ):
        results[name] = {
            "steps_to_50": steps_to_target(curve),
            "final_test_loss": curve[-1][1],
            "theta": [float(v) for v in theta],
            "sequential_steps": curve[-1][0],
        }
        log_a, log_r = results[name]["theta"]
        print(
            f"  {name:6s} {curve[-1][0]:7d} sequential steps: test loss {curve[-1][1]:6.1f}, "
            f"theta = ({log_a:.3f}, {log_r:.3f}), first below {TARGET:.0f} after "
            f"{results[name]['steps_to_50']} steps"
        )
    return results


if __name__ == "__main__":
    main(quick=False)
