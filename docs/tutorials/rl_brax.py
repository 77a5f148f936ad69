"""Training a policy with online ES on truncated windows: NRES vs PES vs TES vs FullES.

Every method spends the same number of environment steps per update
(``2 P W`` for the online methods = ``2 P_full T`` for FullES, the NRES paper's
rule), so curves against *total* environment steps compare sample efficiency
and curves against *sequential* steps compare wall-clock time on a machine with
one worker per particle.

* FullES runs whole episodes (W = T): an unbiased gradient, T sequential steps
  per update.
* TES restarts both partners of a pair from one shared state every window and
  draws fresh noise: cheap, but it ignores how the parameters shaped that state
  (biased, myopic).
* PES accumulates the noise of every window of the episode: unbiased, but the
  accumulated noise makes it noisy.
* NRES keeps one noise per episode and reuses it across windows: unbiased for
  the same smoothed objective as FullES, with lower variance, W sequential
  steps per update.

The loss of a step is minus its reward and the objective is the time-average
loss over an episode of ``T`` steps; particles are step-unlocked (spread over
the episode) so each update sees every part of the horizon. The environment's
own time limit is switched off: the strategy's horizon ends episodes.

Episodes that end when the policy fails (``horizon=None``, the CartPole
setting): there is no strategy horizon; the environment auto-resets and ends an
episode through ``done``, when the pole falls (a time that depends on the
policy) or at its own time limit. The objective is then the expected episode
return. A particle whose episode ends inside a window sits out the rest of
that window and starts its new episode at the next window with fresh noise;
those discarded steps are counted and reported (``discarded_fraction``).

Run ``python docs/tutorials/rl_brax.py`` (``--quick`` for a short run;
``--terminations`` for CartPole-v1 and Acrobot-v1).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax

import evopes
from evopes import envs


@dataclass(frozen=True)
class Setting:
    """One comparison: environment, horizon, window, budget and per-method step sizes."""

    env_name: str = "inverted_double_pendulum"
    library: str = "brax"  # "brax" (spring backend) or "gymnax"
    hidden_sizes: tuple[int, ...] = ()  # () = linear policy, as in the ES papers
    absorbing: bool = False  # True: a fall ends the episode's rewards (no auto-reset)
    horizon: int | None = 1000  # T; None: only the environment ends episodes (done)
    episode_limit: int = 500  # the environment's time limit when horizon is None
    window: int = 100  # W
    num_pairs: int = 30  # P for the online methods; FullES gets P * W / T pairs
    std: float = 0.3
    optimizer: str = "sgd"  # "sgd" or "adam"
    learning_rates: dict = field(default_factory=lambda: {"NRES": 3.0, "PES": 1.0, "TES": 30.0, "FullES": 1.0})
    total_env_steps: int = 6_000_000  # per method, burn-in included
    num_evaluations: int = 20  # evaluation points along each run
    eval_rollouts: int = 8

    @property
    def episode_steps(self) -> int:
        """The longest episode: FullES's and the evaluation's rollout length."""
        return self.episode_limit if self.horizon is None else self.horizon

    @property
    def full_pairs(self) -> int:
        return max(1, self.num_pairs * self.window // self.episode_steps)

    def optax_optimizer(self, method: str) -> optax.GradientTransformation:
        return getattr(optax, self.optimizer)(self.learning_rates[method])


def make_env(setting: Setting):
    if setting.library == "brax":
        return envs.BraxEnv.make(setting.env_name, backend="spring")  # no time limit: T ends episodes
    env = envs.GymnaxEnv.make(setting.env_name)
    # With a horizon the strategy ends episodes; without one, the environment's limit does.
    limit = 10**9 if setting.horizon is not None else setting.episode_limit
    return envs.GymnaxEnv(env.env, env.params.replace(max_steps_in_episode=limit))


def make_policy(setting: Setting, env):
    if setting.library == "brax":
        action_dim, output = env.action_size, "clip"  # brax actions live in [-1, 1]
    elif hasattr(space := env.env.action_space(env.params), "n"):
        action_dim, output = space.n, "argmax"  # a discrete action: the largest output's index
    else:
        action_dim, output = space.shape[0], "identity"
    linear = not setting.hidden_sizes  # the papers' linear policies: no bias, zero init
    policy = envs.MLPPolicy(
        action_dim=action_dim, hidden_sizes=setting.hidden_sizes, use_bias=not linear,
        activation=jnp.tanh, output=output,
        kernel_init=jax.nn.initializers.zeros if linear else jax.nn.initializers.lecun_normal(),
    )
    obs = envs.observation_shape(env)
    theta = policy.init(jax.random.key(0), jnp.zeros(obs.shape, obs.dtype))
    return policy, theta


class Evaluator:
    """Mean return of a policy over fresh T-step rollouts (compiled once, shared by all methods)."""

    def __init__(self, setting: Setting, env, policy):
        fitness = envs.EpisodicFitness(
            env, policy, num_steps=setting.episode_steps, num_rollouts=setting.eval_rollouts
        )
        self._returns = jax.jit(fitness.returns)

    def __call__(self, theta, key) -> float:
        return float(jnp.mean(self._returns(theta, key)))


def train_online(method: str, setting: Setting, task, theta, evaluate, key) -> dict:
    """One online strategy: the raw ask / unroll / tell loop, one lax.scan between evaluations."""
    strategy = {"NRES": evopes.NRES, "PES": evopes.PES, "TES": evopes.TES}[method]
    es = strategy(
        population_size=2 * setting.num_pairs, solution=theta, truncation_length=setting.window,
        horizon=setting.horizon, init_inner=task.init_inner,
        optimizer=setting.optax_optimizer(method),
    )
    params = es.default_params.replace(std=jnp.float32(setting.std))

    def window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        # W steps of every particle; partners get the same keys (common random numbers).
        inner, losses, dones = evopes.unroll(task.step, population, state.inner_state, unroll_key, setting.window)
        state, metrics = es.tell(tell_key, population, losses, state, params, inner_state=inner, dones=dones)
        return state, metrics["num_discarded"]

    @jax.jit
    def windows(state, keys):
        state, masked = jax.lax.scan(window, state, keys)
        return state, jnp.sum(masked)

    num_windows = setting.total_env_steps // (2 * setting.num_pairs * setting.window)
    init_key, loop_key, eval_key = jax.random.split(key, 3)
    state = jax.jit(es.init)(init_key, theta, params)
    curve = _Curve()
    curve.add(0, 0, evaluate(es.get_mean(state), eval_key))
    discarded = 0  # particle-steps after a done inside a window: computed, not counted
    for keys in _chunks(loop_key, num_windows, setting.num_evaluations):
        state, masked = windows(state, keys)
        discarded += int(masked)
        curve.add(es.total_steps(state), es.sequential_steps(state), evaluate(es.get_mean(state), eval_key))
    return {**curve.asdict(), "discarded_fraction": discarded / max(1, curve.total_steps[-1])}


def train_full(setting: Setting, env, policy, theta, evaluate, key) -> dict:
    """FullES: antithetic whole episodes, fitness = time-average loss (minus return / T)."""
    num_pairs, horizon = setting.full_pairs, setting.episode_steps
    es = evopes.FullES(2 * num_pairs, theta, optimizer=setting.optax_optimizer("FullES"))
    params = es.default_params.replace(std_init=jnp.float32(setting.std))
    # Partners share their rollout's randomness (common random numbers), pairs differ.
    fitness = envs.EpisodicFitness(env, policy, num_steps=horizon, common_random_numbers="pairs")

    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        state, _ = es.tell(tell_key, population, fitness(population, eval_key) / horizon, state, params)
        return state, None

    generations = jax.jit(lambda state, keys: jax.lax.scan(generation, state, keys)[0])
    steps_per_generation = 2 * num_pairs * horizon
    num_generations = setting.total_env_steps // steps_per_generation
    init_key, loop_key, eval_key = jax.random.split(key, 3)
    state = jax.jit(es.init)(init_key, theta, params)
    curve = _Curve()
    curve.add(0, 0, evaluate(es.get_mean(state), eval_key))
    done = 0
    for keys in _chunks(loop_key, num_generations, setting.num_evaluations):
        state, done = generations(state, keys), done + len(keys)
        curve.add(done * steps_per_generation, done * horizon, evaluate(es.get_mean(state), eval_key))
    return curve.asdict()


def _chunks(key, num_updates: int, num_evaluations: int):
    """Per-update keys, split into equal chunks (one compiled scan length) between evaluations."""
    chunk = max(1, num_updates // num_evaluations)
    keys = jax.random.split(key, num_updates)
    for start in range(0, num_updates - chunk + 1, chunk):
        yield keys[start : start + chunk]


class _Curve:
    def __init__(self):
        self.total_steps, self.sequential_steps, self.returns = [], [], []

    def add(self, total_steps, sequential_steps, mean_return):
        self.total_steps.append(total_steps)
        self.sequential_steps.append(sequential_steps)
        self.returns.append(mean_return)

    def asdict(self) -> dict:
        return {k: np.asarray(v) for k, v in vars(self).items()}


def compare(setting: Setting, seed: int = 0, methods=("NRES", "PES", "TES", "FullES")) -> dict:
    """Runs every method on the same setting; returns {method: curve} and timings."""
    env = make_env(setting)
    policy, theta = make_policy(setting, env)
    evaluate = Evaluator(setting, env, policy)
    task = envs.OnlineRollout(env, policy, absorbing=setting.absorbing)
    curves = {}
    for method in methods:
        start = time.perf_counter()
        key = jax.random.key(seed)
        if method == "FullES":
            curves[method] = train_full(setting, env, policy, theta, evaluate, key)
        else:
            curves[method] = train_online(method, setting, task, theta, evaluate, key)
        curves[method]["wall_s"] = time.perf_counter() - start
        print(f"{method:7s} final return {curves[method]['returns'][-1]:9.2f}  "
              f"env steps {curves[method]['total_steps'][-1]:>10d}  "
              f"sequential {curves[method]['sequential_steps'][-1]:>8d}  "
              f"({curves[method]['wall_s']:.0f} s)", flush=True)
    return curves


def _same_rate(rate: float) -> dict:
    return dict.fromkeys(("NRES", "PES", "TES", "FullES"), rate)


# Learning rates: the best final return of each method over Adam rates
# {0.001, 0.003, 0.01, 0.03, 0.1} in exploratory single-seed runs (not part of
# the benchmark, which keeps them fixed).

#: brax inverted_pendulum (spring backend), linear policy from zero, a fall ends
#: the episode's rewards. FullES gets max(1, P W / T) = 1 pair (2,000 steps per update).
INVERTED_PENDULUM = Setting(
    env_name="inverted_pendulum", library="brax", absorbing=True, horizon=1000, window=10,
    num_pairs=20, std=0.1, optimizer="adam",
    learning_rates={"NRES": 3e-3, "PES": 3e-3, "TES": 1e-2, "FullES": 1e-1},
    total_env_steps=2_000_000, num_evaluations=20, eval_rollouts=8,
)
#: gymnax Pendulum-v1 swing-up, MLP 3-16-1 (tanh), short windows (W = 4 of T = 200).
PENDULUM = Setting(
    env_name="Pendulum-v1", library="gymnax", hidden_sizes=(16,), horizon=200, window=4,
    num_pairs=50, std=0.1, optimizer="adam",
    learning_rates={"NRES": 3e-2, "PES": 1e-2, "TES": 3e-2, "FullES": 3e-2},
    total_env_steps=4_000_000, num_evaluations=20, eval_rollouts=16,
)
#: gymnax CartPole-v1 and Acrobot-v1 as shipped: episodes end when the pole falls or the
#: arm swings up (a time that depends on the policy) or at 500 steps; no strategy horizon.
#: Linear greedy policies from zero (which always push one way: 9 steps of CartPole, 500
#: of Acrobot). Rates: best mean of the last five evaluations over Adam rates
#: {0.003, 0.01, 0.03, 0.1}, one exploratory seed at this budget.
CARTPOLE = Setting(
    env_name="CartPole-v1", library="gymnax", horizon=None, episode_limit=500, window=10,
    num_pairs=25, std=0.1, optimizer="adam",
    learning_rates={"NRES": 3e-3, "PES": 3e-3, "TES": 3e-2, "FullES": 1e-2},
    total_env_steps=300_000, num_evaluations=15, eval_rollouts=16,
)
ACROBOT = replace(
    CARTPOLE, env_name="Acrobot-v1",
    learning_rates={"NRES": 3e-3, "PES": 3e-3, "TES": 3e-3, "FullES": 3e-2},
)
SETTINGS = {"brax inverted_pendulum": INVERTED_PENDULUM, "gymnax Pendulum-v1": PENDULUM}
TERMINATION_SETTINGS = {"gymnax CartPole-v1": CARTPOLE, "gymnax Acrobot-v1": ACROBOT}
QUICK_SETTINGS = {"gymnax Pendulum-v1": replace(PENDULUM, total_env_steps=1_600_000, num_evaluations=8)}
#: A few windows of every method, for the tests.
SMOKE = Setting(
    env_name="Pendulum-v1", library="gymnax", hidden_sizes=(4,), horizon=20, window=5, num_pairs=4,
    std=0.1, optimizer="adam", learning_rates=_same_rate(0.01), total_env_steps=800,
    num_evaluations=2, eval_rollouts=2,
)


def main(quick: bool = False, seed: int = 0, terminations: bool = False) -> dict:
    if terminations:  # CartPole and Acrobot: episodes end when the policy fails or succeeds
        settings = {label: replace(s, total_env_steps=s.total_env_steps // (2 if quick else 1))
                    for label, s in TERMINATION_SETTINGS.items()}
    else:
        settings = QUICK_SETTINGS if quick else SETTINGS
    return {label: compare(setting, seed) for label, setting in settings.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--terminations", action="store_true", help="CartPole-v1 and Acrobot-v1")
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed, terminations=args.terminations)
