"""Meta-learning a learning-rate schedule: PES vs truncated ES vs truncated backprop.

Run: ``python docs/tutorials/toy_regression.py`` (paper settings, 2000 outer
iterations, about a minute on a laptop CPU).
"""

import jax
import jax.numpy as jnp
import optax

import evopes
from evopes.tasks import toy_regression as toy


def make_strategy(strategy_class):
    """50 antithetic pairs, windows of W = 10 steps, episodes of T = 100 steps, lock-step."""
    return strategy_class(
        population_size=100,
        solution=toy.INITIAL_THETA,  # (log lr_initial, log lr_final) = (-4, -4)
        truncation_length=toy.TRUNCATION_LENGTH,  # W = 10
        horizon=toy.HORIZON,  # T = 100: the strategy resets the inner problem every 100 steps
        init_inner=toy.init_inner,  # x = (1, 1), t = 0
        step_unlocked=False,  # the paper's particles run in lock-step
        optimizer=optax.adam(1e-2, b1=0.99, b2=0.999),
    )


def train(es, std, key, num_iterations, eval_every=100):
    """ask / unroll / tell, with the meta-loss of the mean every ``eval_every`` windows."""
    params = es.default_params.replace(std=std)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, toy.INITIAL_THETA, params)

    def one_window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            toy.step, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        state, _ = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, None

    @jax.jit
    def block(state, keys):  # eval_every windows, then one evaluation
        state, _ = jax.lax.scan(one_window, state, keys)
        theta = es.get_mean(state)
        return state, (theta, toy.meta_loss(theta))

    keys = jax.random.split(loop_key, num_iterations).reshape(-1, eval_every)
    history = []
    for block_keys in keys:
        state, (theta, meta_loss) = block(state, block_keys)
        history.append((theta, meta_loss))
    return history


def main(quick: bool = True) -> dict:
    num_iterations = 1000 if quick else 2000
    print(f"meta-loss at the start: L(-4, -4) = {float(toy.meta_loss(toy.INITIAL_THETA)):.1f}")
    results = {}
    for name, strategy_class, std in (("PES", evopes.PES, 0.3), ("TES", evopes.TES, 1.0)):
        history = train(make_strategy(strategy_class), std, jax.random.key(0), num_iterations)
        theta, meta_loss = history[-1]
        results[name] = {
            "theta": [float(v) for v in theta],
            "meta_loss": float(meta_loss),
            "best_meta_loss": float(min(loss for _, loss in history)),
        }
    trace = jax.jit(lambda: toy.tbptt(num_iterations=num_iterations))()
    results["TBPTT"] = {
        "theta": [float(v) for v in trace.theta[-1]],
        "meta_loss": float(trace.meta_loss[-1]),
        "best_meta_loss": float(jnp.min(trace.meta_loss)),
    }

    print(f"after {num_iterations} outer iterations (sum of the 100 per-step losses):")
    for name, result in results.items():
        theta0, theta1 = result["theta"]
        print(
            f"  {name:6s} theta = ({theta0:6.2f}, {theta1:6.2f})"
            f"   meta-loss = {result['meta_loss']:7.1f}"
            f"   best seen = {result['best_meta_loss']:7.1f}"
        )
    return results


if __name__ == "__main__":
    main(quick=False)
