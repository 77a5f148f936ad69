"""Influence balancing: PES finds theta* = -1/6 where truncated ES walks away.

Run: ``python docs/tutorials/influence_balancing.py`` (paper settings, about a
minute on a laptop CPU, mostly compilation).
"""

import jax
import optax

import evopes
from evopes.tasks import influence_balancing as ib

NUM_PAIRS = 500  # the paper's "N = 1000" counts particles: 500 antithetic pairs
STD = 0.1
LEARNING_RATE = 1e-4  # with W = 1 evopes' estimator equals the paper code's


def make_strategy(strategy_class):
    """PES or TES on the task: one-step windows, no episode ends, lock-step particles."""
    return strategy_class(
        population_size=2 * NUM_PAIRS,
        solution=ib.INITIAL_THETA,  # theta is a scalar, 0.5 at the start
        truncation_length=1,  # W = 1: one ask/tell per step of the system
        horizon=None,  # T = infinity: the system is never reset...
        step_unlocked=False,  # ...so there is nothing to unlock over
        init_inner=ib.init_inner,  # s = ones, shared by all particles
        optimizer=optax.sgd(LEARNING_RATE),
    )


def train(es, key, num_iterations):
    """The raw ask/tell loop, compiled once with lax.scan; returns theta after every update."""
    params = es.default_params.replace(std=STD)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, ib.INITIAL_THETA, params)

    def one_window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        # 1. theta + e_i and theta - e_i for every pair (leading axis 2P).
        population, state = es.ask(ask_key, state, params)
        # 2. Every particle runs W steps from its own inner state.
        inner, losses, dones = evopes.unroll(
            ib.step, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        # 3. The estimate (PES: weighted by the accumulated noise), the SGD step,
        #    and the bookkeeping of times, accumulators and inner states.
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, es.get_mean(state)

    _, thetas = jax.jit(
        lambda state: jax.lax.scan(one_window, state, jax.random.split(loop_key, num_iterations))
    )(state)
    return thetas


def main(quick: bool = True) -> dict:
    num_iterations = 1000 if quick else 3000
    results = {}
    for strategy_class in (evopes.PES, evopes.TES):
        thetas = train(make_strategy(strategy_class), jax.random.key(0), num_iterations)
        theta = float(thetas[-1])
        results[strategy_class.__name__] = {
            "theta": theta,
            "eval_loss": float(ib.evaluate(thetas[-1])),
        }
    # The paper's baseline: truncated backprop through K steps, same SGD.
    for k in (1, 10, 100):
        trace = jax.jit(
            lambda k=k: ib.tbptt(k, learning_rate=LEARNING_RATE, num_iterations=num_iterations)
        )()
        results[f"TBPTT K={k}"] = {
            "theta": float(trace.theta[-1]),
            "eval_loss": float(trace.eval_loss[-1]),
        }

    print(f"after {num_iterations} iterations (theta* = {ib.OPTIMAL_THETA:.5f}):")
    for name, result in results.items():
        print(
            f"  {name:12s} theta = {result['theta']:12.5g}   eval loss = {result['eval_loss']:.3g}"
        )
    return results


if __name__ == "__main__":
    main(quick=False)
