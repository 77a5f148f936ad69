"""The online ES engine: one estimator, four noise schedules (TES, PES, GPES, NRES).

Online evolution strategies estimate the gradient of a loss that is produced
step by step by an unrolled system (an RNN, an inner optimiser, a simulator, an
environment) without waiting for the end of an episode. One ``ask``/``tell``
round is one *truncation window* of ``W`` steps:

1. ``ask`` gives every particle its parameters for the window: particle ``i``
   runs ``theta + e_i`` and its antithetic partner ``i + P`` runs
   ``theta - e_i`` (``P`` pairs, ``2P`` particles, the halves layout).
2. The user runs ``W`` steps of the system for every particle, continuing from
   the particle's inner state, and collects the per-step losses ``l_{p,s}``.
3. ``tell`` turns the losses into a gradient estimate, applies the optax
   optimizer to the mean, and does the episode bookkeeping (time, resets,
   accumulators).

**Estimator** (Vicol et al. 2021, "Unbiased Gradient Estimation in Unrolled
Computation Graphs with Persistent Evolution Strategies", ICML 2021; Li et al.
2023, "Variance-Reduced Gradient Estimation via Noise-Reuse in Online Evolution
Strategies", NeurIPS 2023). With the mean-over-steps convention,

    g = 1 / (2 N_valid) * sum_{particles p} sum_{steps s} sign_p * l_{p,s} * w_{p,s},

where ``sign_p`` is +1 for the first half and -1 for the second, ``N_valid`` is
the number of valid (pair, step) entries (``P * W`` when no loss is masked) and
the Stein weight ``w_{p,s}`` is the sum, over the DISTINCT noise blocks ``e_j``
the particle has applied since its episode began, of ``e_j / sigma_j^2``
(Stein's lemma once per independent block). With a constant ``sigma`` this is
the familiar ``xi_{p,s} / sigma^2`` with ``xi`` the accumulated perturbation;
weighting every block at the ``sigma_j`` it was drawn at keeps the estimator
exact when the user changes ``params.std`` while a particle still holds older
noise. For synchronised partners the formula is
``1 / (P W) * sum_i sum_s (l+_{i,s} - l-_{i,s}) xi_{i,s} / (2 sigma^2)``
(the papers' form); written per particle it stays right when an environment
ends the two partners' episodes at different steps.

The schedules differ only in WHEN a particle draws fresh noise (``_redraw``)
and whether older blocks are remembered (``accumulates``):

=========  ===============================================  ===========
strategy   a particle draws fresh noise at a window start   accumulator
=========  ===============================================  ===========
TES        always (partners then share one state)           none
PES        always                                           yes
GPES(K)    when its noise is K steps old, or its episode    yes
           (re)starts
NRES       only when its episode (re)starts                 none
=========  ===============================================  ===========

All schedules also draw at the first ``ask``. Fresh noise comes from one
``noise.draw_ids(key, P, d)`` per ``ask``: partners that redraw together get
the same id, so a pair stays antithetic as long as its partners' episodes are
in step (always, unless an environment's ``done`` flags separate them; then
each partner follows its own episode and schedule, and the per-particle
estimator stays unbiased, only the antithetic variance reduction is lost
until they meet again at a common episode start). The accumulator ``a_p`` holds
``sum_j e_j / sigma_j^2`` over the blocks before the current one; the weight of
every counted step is ``w = e / sigma^2 + a_p``. The accumulator is only ever
changed in ``tell``: calling ``ask`` twice never counts a block twice.

**Objective with episodes ended by the environment.** When ``done`` flags end
episodes at a time ``L`` that depends on theta (RL with terminations), the
objective is the expected episode return ``R = sum_{t<L} l_t``, smoothed with
the schedule's noise. Stein's lemma gives ``E[R e] / sigma^2 = grad E[R]`` only
if every noise that weighs an episode's losses was drawn after the episode
began and independently of when it began. So a ``done`` inside a window ends
the particle's part in that window: its later steps are not counted (they
run, with the old episode's noise, and are discarded), and at the window end
the particle restarts from ``init_inner`` at time 0 and draws fresh noise at
the next ``ask``. Every episode therefore starts at a window boundary, with
noise drawn at that boundary. Counting every particle-step, the long-run mean
of the estimates is ``grad E[R] / E[C]`` (renewal-reward), with ``C`` the
particle-steps one episode occupies (``L`` rounded up to a multiple of ``W``):
a positive multiple of the gradient. The normalisation ``N_valid`` counts the
discarded steps too, so it never depends on the noise. The cost is the
discarded steps: on average fewer than ``W`` per episode (none for ``W = 1``),
reported as ``metrics["num_discarded"]``; the benchmark ``rl-terminations``
measures 0.4-1.1% of the steps on CartPole-v1 and 3-4% on Acrobot-v1 with
``W = 10``. Fewer counted steps raise the variance of a window's estimate by
about ``1 / (1 - fraction discarded)``.
For fixed-length episodes (the horizon) this is the time-average objective
above times the constant ``T``.

**Episode ends** (all in :meth:`OnlineES._end_window`):

* horizon: ``horizon`` must be a multiple of ``W``, so a particle reaches it at
  a window end; ``tell`` then restarts its inner state from
  ``init_inner(key)`` with a key shared by both partners, sets its time to 0,
  clears its accumulator, and the next ``ask`` draws fresh noise.
* ``done`` from an auto-resetting environment: the loss of the step that
  reports ``done`` still belongs to the old episode; the rest of the window is
  not counted; at the window end the particle restarts exactly as at the
  horizon (``init_inner``, time 0, accumulator cleared, fresh noise next).
  Partners that end in the same window restart together, from the same key.

**Step-unlocking** (default when ``horizon`` is given): every pair starts at a
random multiple of ``W`` in ``[0, horizon)`` with a fresh inner state, so one
update averages over the whole horizon instead of over one window position.
The first ``horizon / W`` windows are a burn-in: the estimate is computed and
reported, the mean is not updated (``metrics["burn_in"]``), and by its end
every particle has restarted from a genuine episode start.

Which smoothed objective each estimator is unbiased for is explained in the
concepts page (``docs/concepts/online_es.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from evopes.arguments import check_key
from evopes.compiled import compiled_method
from evopes.noise import GaussianNoise, NoiseSource, readable_from_population
from evopes.online.count import Count
from evopes.online.keys import pair_keys
from evopes.online.unroll import sum_over_steps
from evopes.population_check import no_checksum, population_checksum
from evopes.spec import PyTree
from evopes.strategy import Metrics, Params, Strategy

InitInner = Callable[[jax.Array], PyTree]

#: The optimizer used when none is given: plain SGD, learning rate 0.01.
DEFAULT_OPTIMIZER = optax.sgd(learning_rate=1e-2)
DEFAULT_NOISE = GaussianNoise()
DEFAULT_STD = 0.1
#: Up to this many parameters ``tell`` regenerates the noise from the ids even
#: when the population is handed back, and only checks the population against it
#: (:meth:`OnlineES._current_block`); above, reading the noise off the
#: population is cheaper than generating it again.
REGENERATE_UP_TO_DIMS = 64

#: Valid ``params.std``: the Stein weights ``e / std^2`` and ``1 / std^2`` must
#: stay finite in float32 with room for the losses they multiply.
STD_RANGE = (1e-18, 1e18)


class WindowStatistics(NamedTuple):
    """What ``tell`` takes from one window's (W, 2P) losses and dones.

    Attributes:
      current: (2P,) ``sign_p sum_s l_{p,s}`` over the counted steps: those
        at or before the particle's first ``done`` of the window whose pair
        has no non-finite counted loss. It is the coefficient of the current
        block and of the accumulator.
      num_valid: number of valid (pair, step) entries, ``N_valid``: ``P W``
        less the entries masked for a non-finite loss (steps after a
        ``done`` count, so the normalisation does not depend on the noise).
      ended: (2P,) bool, the particle's episode ended inside the window.
      num_finite: number of finite counted loss entries.
      num_counted: number of counted loss entries (``2 P W`` without dones).
      finite_loss_mean: mean of the finite counted losses (NaN if none).
    """

    current: jax.Array
    num_valid: jax.Array
    ended: jax.Array
    num_finite: jax.Array
    num_counted: jax.Array
    finite_loss_mean: jax.Array


@struct.dataclass
class OnlineParams(Params):
    """Hyperparameters that may be vmapped over.

    Attributes:
      std: standard deviation ``sigma`` of newly drawn perturbations. Noise a
        pair already holds keeps the std it was drawn with.
    """

    std: jax.Array | float = 0.1


@struct.dataclass
class OnlineState:
    """State of an online strategy. ``P`` pairs, ``2P`` particles, ``d`` dims.

    Attributes:
      mean: flat mean ``theta``, shape (d,).
      opt_state: the optax state of the optimizer (over the mean's pytree).
      inner_state: the particles' inner states (user pytree, leading axis 2P),
        or None for a stateless system.
      time: (2P,) int32, each particle's step within its episode at the start
        of the next window (saturates at 2^30 when there is no horizon).
      noise_ids: (2P, ...) ids of each particle's current noise block
        (partners in step hold the same id and apply it with opposite signs).
      noise_std: (2P,) std the current block was drawn with.
      noise_age: (2P,) int32, steps the current block has been used for
        (saturates at 2^30, far beyond any noise period).
      accumulator: (2P, d), ``sum_j e_j / std_j^2`` over the blocks each
        particle applied in its episode before the current block (PES, GPES);
        None for TES and NRES.
      noise_state: the noise source's array state (a table, or empty).
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`): ``tell`` reads only that population.
      generation_counter: number of ``tell`` calls (windows), an exact
        :class:`~evopes.online.count.Count` that never wraps. Every window
        unrolls ``2P W`` particle-steps (``W`` along one particle): see
        :meth:`OnlineES.total_steps` and :meth:`OnlineES.sequential_steps`.
    """

    mean: jax.Array
    opt_state: Any
    inner_state: Any
    time: jax.Array
    noise_ids: jax.Array
    noise_std: jax.Array
    noise_age: jax.Array
    accumulator: jax.Array | None
    noise_state: jax.Array
    population_checksum: jax.Array
    generation_counter: Count


class OnlineES(Strategy):
    """Base of the online strategies: the engine. Subclasses pick the noise schedule.

    Use :class:`evopes.TES`, :class:`evopes.PES`, :class:`evopes.GPES` or
    :class:`evopes.NRES`. The raw loop, the primary interface::

        es = evopes.PES(population_size=2 * P, solution=theta, truncation_length=W,
                        horizon=T, init_inner=init_inner, optimizer=optax.sgd(lr))
        params = es.default_params.replace(std=0.1)
        state = es.init(key, theta, params)
        for _ in range(num_windows):
            population, state = es.ask(ask_key, state, params)   # leading axis 2P
            inner = state.inner_state
            ...  # run W steps of every particle p with population[p]: losses (W, 2P)
            state, metrics = es.tell(tell_key, population, losses, state, params,
                                     inner_state=inner, dones=dones)

    or, for a system given as a step function, :func:`evopes.unroll` runs the
    middle part. Every method is pure and works under ``jit``, ``vmap`` and
    ``lax.scan``; strategies with equal configuration are equal and hash alike
    (functions such as ``init_inner`` and the optimizer compare by code and
    captured values: rebuilding an equal ``optax.adam(1e-3)`` is fine), so
    they share compiled code. Called eagerly (outside any ``jit``), ``init``,
    ``ask``, ``tell`` and ``estimate`` compile themselves, as evosax's do
    (:func:`evopes.compiled.compiled_method`); inside your own ``jit`` they
    add nothing. A strategy is immutable once built.

    Args:
      population_size: ``2P``, even. Particle ``i`` runs ``theta + e_i`` and
        particle ``i + P`` runs ``theta - e_i``.
      solution: template pytree of the outer parameters ``theta``.
      truncation_length: ``W``, steps per ``ask``/``tell`` window.
      horizon: ``T``, episode length in steps (a multiple of ``W``), or None
        for episodes that never end except through ``done`` flags.
      init_inner: ``init_inner(key) -> inner state of ONE particle`` at an
        episode start, or None for a stateless system.
      optimizer: optax transformation applied to the mean in ``tell``
        (default: ``optax.sgd(0.01)``); it sees the mean as a pytree.
      step_unlocked: start pairs at random W-aligned times with a burn-in of
        ``T / W`` windows. Default: True when ``horizon`` is given; must be
        False when it is not.
      noise: :class:`evopes.GaussianNoise` (default) or :class:`evopes.NoiseTable`.
      maximize: maximise the losses instead of minimising them.
    """

    #: Whether the particles remember the noise blocks of earlier windows.
    accumulates: bool = False
    #: Whether the negative partner restarts every window from the positive one's state.
    branches_from_positive: bool = False
    uses_population = False

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        truncation_length: int,
        horizon: int | None = None,
        init_inner: InitInner | None = None,
        optimizer: optax.GradientTransformation | None = None,
        step_unlocked: bool | None = None,
        noise: NoiseSource = DEFAULT_NOISE,
        *,
        maximize: bool = False,
    ):
        super().__init__(population_size, solution, maximize=maximize)
        if self.population_size % 2:
            raise ValueError(
                "population_size: expected an even number (antithetic pairs), "
                f"got {population_size}"
            )
        if int(truncation_length) != truncation_length or truncation_length < 1:
            raise ValueError(
                f"truncation_length: expected an integer >= 1, got {truncation_length!r}"
            )
        self.truncation_length = int(truncation_length)
        if horizon is not None:
            if int(horizon) != horizon or horizon < 1:
                raise ValueError(f"horizon: expected None or an integer >= 1, got {horizon!r}")
            if horizon % self.truncation_length:
                raise ValueError(
                    "horizon: expected a multiple of "
                    f"truncation_length={self.truncation_length}, got {horizon}"
                )
            horizon = int(horizon)
        self.horizon = horizon
        if step_unlocked is None:
            step_unlocked = horizon is not None
        if step_unlocked and horizon is None:
            raise ValueError(
                "step_unlocked: expected False when horizon is None "
                "(no horizon to unlock over), got True"
            )
        self.step_unlocked = bool(step_unlocked)
        if init_inner is not None and not callable(init_inner):
            raise ValueError(
                f"init_inner: expected a function key -> inner state or None, got {init_inner!r}"
            )
        self.init_inner = init_inner
        optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise ValueError(
                f"optimizer: expected an optax GradientTransformation, got {optimizer!r}"
            )
        self.optimizer = optimizer
        if not (hasattr(noise, "draw_ids") and hasattr(noise, "sample")):
            raise ValueError(f"noise: expected GaussianNoise() or NoiseTable(), got {noise!r}")
        self.noise = noise

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(population_size={self.population_size}, "
            f"num_dims={self.num_dims}, "
            f"truncation_length={self.truncation_length}, horizon={self.horizon}, "
            f"step_unlocked={self.step_unlocked})"
        )

    @property
    def num_pairs(self) -> int:
        return self.population_size // 2

    @property
    def num_particles(self) -> int:
        """Particles the user unrolls per window: ``2P`` (3P for TES's unperturbed branch)."""
        return self.population_size

    @property
    def burn_in_windows(self) -> int:
        """Windows whose estimates are not applied: ``horizon / W`` when step-unlocked, else 0."""
        return self.horizon // self.truncation_length if self.step_unlocked else 0

    @property
    def default_params(self) -> OnlineParams:
        return OnlineParams(std=jnp.float32(DEFAULT_STD))

    def validate_params(self, params: OnlineParams) -> None:
        """ValueError unless ``STD_RANGE[0] <= params.std <= STD_RANGE[1]`` (concrete values).

        Traced values cannot be checked here; :meth:`tell` then flags them
        (``metrics["invalid_params"]``, ``metrics["terminate"]``) and skips the
        update, and :meth:`ask` never lets them into the state.
        """
        self._check_params_type(params)
        value = params.std
        if isinstance(value, jax.core.Tracer):
            return
        array = np.asarray(value, np.float64)
        low, high = STD_RANGE
        if not (np.all(np.isfinite(array)) and np.all(array >= low) and np.all(array <= high)):
            raise ValueError(
                f"params.std: expected a finite value in [{low:g}, {high:g}] (the Stein "
                f"weights divide by std^2, which must stay finite in float32), got {array}"
            )

    def _check_params_type(self, params) -> None:
        if not isinstance(params, OnlineParams):
            raise ValueError(
                f"params: expected {type(self).__name__}'s OnlineParams "
                f"(es.default_params), got {type(params).__name__}"
            )

    @staticmethod
    def _valid_std(std) -> jax.Array:
        """Traced check of ``params.std``: finite and in ``STD_RANGE``."""
        std = jnp.asarray(std, jnp.float32)
        return jnp.isfinite(std) & (std >= STD_RANGE[0]) & (std <= STD_RANGE[1])

    # -- the noise schedule (what subclasses change) -------------------------
    def _redraw(self, time: jax.Array, noise_age: jax.Array, first: jax.Array) -> jax.Array:
        """(2P,) bool: which particles draw fresh noise at the start of the next window.

        ``first`` is True before the first window (nothing is held yet).
        """
        raise NotImplementedError

    @staticmethod
    def _first_or_episode_start(time, first) -> jax.Array:
        """(2P,) bool: nothing held yet, or the particle starts an episode."""
        return (time == 0) | first

    # -- init / ask -------------------------------------------------------------
    @compiled_method(before=lambda self, key, mean, params: self.validate_params(params))
    def init(self, key: jax.Array, mean: PyTree, params: OnlineParams) -> OnlineState:
        """State centred on ``mean``: fresh inner states (shared within pairs) and times.

        Step-unlocked: pair ``i`` starts at time ``W * u_i``, ``u_i`` uniform in
        ``{0, ..., T/W - 1}``; lock-step: every particle starts at time 0.
        """
        self.validate_params(params)
        flat_mean = self.spec.ravel(mean)
        P, W = self.num_pairs, self.truncation_length
        offset_key, inner_key, ids_key = jax.random.split(key, 3)
        if self.step_unlocked:
            offsets = W * jax.random.randint(offset_key, (P,), 0, self.horizon // W, jnp.int32)
        else:
            offsets = jnp.zeros((P,), jnp.int32)
        # A traced invalid std never enters the state (tell flags it and stops the run).
        std = jnp.asarray(params.std, jnp.float32)
        std = jnp.where(self._valid_std(std), std, DEFAULT_STD)
        return OnlineState(
            mean=flat_mean,
            opt_state=self.optimizer.init(self._float32_tree(flat_mean)),
            inner_state=self._fresh_inner(inner_key),
            time=jnp.concatenate([offsets, offsets]),
            # Placeholder ids: generation_counter == 0 makes the first ask redraw them all.
            noise_ids=jnp.tile(self.noise.draw_ids(ids_key, P, self.num_dims), (2, 1)),
            noise_std=jnp.full((2 * P,), std),
            noise_age=jnp.zeros((2 * P,), jnp.int32),
            accumulator=jnp.zeros((2 * P, self.num_dims), jnp.float32)
            if self.accumulates
            else None,
            # The init key itself seeds the noise source, as in FullES/OpenES, so
            # that strategies initialised with the same key share the same table.
            noise_state=self.noise.init(key, self.num_dims),
            population_checksum=no_checksum(),
            generation_counter=Count.zero(),
        )

    @compiled_method()
    def ask(
        self, key: jax.Array, state: OnlineState, params: OnlineParams
    ) -> tuple[PyTree, OnlineState]:
        """Parameters of every particle for the next window, leading axis ``2P``.

        Particles selected by the schedule get fresh ids from
        ``noise.draw_ids(key, P, d)`` (pair ``i``'s id for both partners) and
        the current ``params.std``; the others keep their noise and its std.
        ``ask`` is a pure function of ``(key, state, params)`` and never
        touches the accumulator, so calling it again before ``tell`` simply
        replaces the unused draw (as if only the last ``ask`` had happened).
        """
        P = self.num_pairs
        redraw = self._redraw(state.time, state.noise_age, state.generation_counter.is_zero())
        # Drawing ids costs a round of bit generation: skip it in windows
        # without a redraw (most windows of NRES).
        ids = jax.lax.cond(
            jnp.any(redraw),
            lambda: jnp.where(
                redraw[:, None],
                jnp.tile(self.noise.draw_ids(key, P, self.num_dims), (2, 1)),
                state.noise_ids,
            ),
            lambda: state.noise_ids,
        )
        self._check_call(key, state, params)
        # An invalid std (possible under jit) is never drawn: the held std stays.
        use_new = redraw & self._valid_std(params.std)
        std = jnp.where(use_new, jnp.asarray(params.std, jnp.float32), state.noise_std)
        # Only the noise changes: the redraw decision depends on (time, age,
        # counter), which ask leaves alone, so asking again decides the same
        # way and just replaces the unused draw; tell re-derives it.
        state = state.replace(noise_ids=ids, noise_std=std)
        perturbation = (self._signs() * std)[:, None] * self._standard_noise(state)
        flat_population = state.mean + perturbation
        if readable_from_population(self.noise, self.spec):
            state = state.replace(population_checksum=population_checksum(flat_population))
        return self.spec.unravel_population(flat_population), state

    # -- tell -------------------------------------------------------------------
    @compiled_method(static_argnames=("apply_update",))
    def tell(
        self,
        key: jax.Array,
        population: PyTree | None,
        losses: jax.Array,
        state: OnlineState,
        params: OnlineParams,
        *,
        inner_state: PyTree = None,
        dones: jax.Array | None = None,
        apply_update: bool = True,
    ) -> tuple[OnlineState, Metrics]:
        """Estimates the gradient from one window, updates the mean, ends episodes.

        Args:
          key: randomness for fresh inner states of particles that reach the horizon.
          population: what ``ask`` returned, or None. With Gaussian noise the
            perturbations are read off it (cheaper than regenerating them);
            otherwise, when None, or when it is not what ``ask`` produced
            (clipped, edited: ``metrics["population_mismatch"]``), they are
            rebuilt from the state's ids. To evaluate a clipped population,
            evaluate the clipped copy and hand back the unclipped one.
          losses: (W, 2P) per-step losses; a non-finite loss masks its pair at
            that step.
          state: the state returned by ``ask``.
          params: hyperparameters.
          inner_state: the particles' inner states after the window (required
            when the strategy has ``init_inner``).
          dones: optional (W, 2P) bools from an auto-resetting environment:
            True at the last step of an episode.
          apply_update: False returns the estimate and advances the
            bookkeeping without touching the mean and the optimizer state
            (for variance studies; see also :meth:`estimate`).

        Returns:
          ``(state, metrics)``: metrics hold ``gradient`` (pytree like theta),
          ``mean_loss`` (mean finite counted loss of the window; NaN if none),
          ``total_steps`` and ``sequential_steps`` (float32, exact below 2^24;
          exact at any size from :meth:`total_steps` and
          :meth:`sequential_steps` on the host), ``burn_in`` (True when the update was not
          applied because of the burn-in), ``num_nonfinite`` (non-finite loss
          entries), ``num_masked`` ((pair, step) entries left out),
          ``num_discarded`` (particle-steps after a ``done`` in the window:
          computed but not counted, the cost of ending episodes mid-window),
          ``finite_gradient`` (False when the estimate overflowed; the update
          is then skipped), ``population_mismatch`` (the population handed
          back was not ``ask``'s; the noise was regenerated),
          ``invalid_params`` (``{"std": bool}``: a traced ``params.std``
          outside ``STD_RANGE``; the update is then skipped), ``terminate``
          (True when a parameter is invalid: :func:`evopes.run` stops) and
          ``generation_counter``.
        """
        W, P = self.truncation_length, self.num_pairs
        self._check_call(key, state, params)
        losses = self._check_window_array(losses, "losses")
        if dones is not None:
            dones = self._check_window_array(dones, "dones").astype(bool)
            if self.init_inner is None and state.inner_state is not None:
                raise ValueError(
                    "dones: an episode that ends inside a window restarts at the next "
                    "window from init_inner, expected a strategy built with init_inner=..., "
                    "got init_inner=None with a non-empty inner state"
                )
        inner_state = self._check_inner_state(inner_state, state)
        if population is not None:
            self.spec.check(population, "population", batch_shape=(self.population_size,))

        objective = -losses if self.maximize else losses
        stats = self._window_statistics(objective, dones)
        current, population_mismatch = self._current_block(state, population)
        gradient = self._gradient(stats, current, state.accumulator, state)

        new_state = self._end_window(key, state, inner_state, stats.ended, current)
        burn_in = state.generation_counter.less_than(self.burn_in_windows)
        invalid_std = ~self._valid_std(params.std)
        finite_gradient = jnp.all(jnp.isfinite(gradient))
        if apply_update:
            mean_tree = self._float32_tree(state.mean)
            updates, opt_state = self.optimizer.update(
                self._float32_tree(jnp.where(finite_gradient, gradient, 0.0)),
                state.opt_state,
                mean_tree,
            )
            mean = self.spec.ravel(optax.apply_updates(mean_tree, updates))
            # No update during the burn-in, from an estimate that overflowed, or
            # with invalid hyperparameters (only possible under jit).
            skip = burn_in | ~finite_gradient | invalid_std
            keep = lambda old, new: jnp.where(skip, old, new)
            new_state = new_state.replace(
                mean=keep(state.mean, mean),
                opt_state=jax.tree_util.tree_map(keep, state.opt_state, opt_state),
            )

        metrics = {
            "gradient": self.spec.unravel(gradient),
            "mean_loss": stats.finite_loss_mean,
            "total_steps": new_state.generation_counter.as_float() * (self.num_particles * W),
            "sequential_steps": new_state.generation_counter.as_float() * W,
            "burn_in": burn_in,
            "num_nonfinite": stats.num_counted - stats.num_finite,
            "num_masked": W * P - stats.num_valid,
            "num_discarded": W * 2 * P - stats.num_counted,
            "finite_gradient": finite_gradient,
            "population_mismatch": population_mismatch,
            "invalid_params": {"std": invalid_std},
            "terminate": invalid_std,
            "generation_counter": new_state.generation_counter.as_float(),
        }
        return new_state, metrics

    @compiled_method()
    def estimate(
        self,
        key: jax.Array,
        population: PyTree | None,
        losses: jax.Array,
        state: OnlineState,
        params: OnlineParams,
        *,
        inner_state: PyTree = None,
        dones: jax.Array | None = None,
    ) -> tuple[PyTree, OnlineState]:
        """The gradient estimate alone: ``tell(..., apply_update=False)``.

        Returns ``(gradient pytree, state)`` where the state has the episode
        bookkeeping advanced (time, resets, accumulators) and the mean and
        optimizer state unchanged.
        """
        state, metrics = self.tell(
            key,
            population,
            losses,
            state,
            params,
            inner_state=inner_state,
            dones=dones,
            apply_update=False,
        )
        return metrics["gradient"], state

    # -- the estimator ------------------------------------------------------------
    def _window_statistics(self, objective: jax.Array, dones: jax.Array | None) -> WindowStatistics:
        """Everything ``tell`` needs from the (W, 2P) losses and dones, in one pass when it can.

        A non-finite loss masks its pair at that step; a ``done`` ends the
        particle's episode, and its later steps in the window are not counted.
        In the usual window (all
        losses finite, no ``done``) neither matters: the column sums of the
        losses give every number, and the masks are only built when needed.
        A column sum is finite exactly when all its losses are (an overflowing
        sum also takes the masked path, which then reports the overflow).
        ``dones=None`` (a system that never ends episodes itself) leaves the
        done handling out of the compiled program.

        Sums over the W steps are products with a vector of ones
        (:func:`evopes.online.unroll.sum_over_steps`): reductions over the
        (W, 2P) array were the largest cost of ``tell`` on small systems.
        """
        W, P = self.truncation_length, self.num_pairs
        sign = self._signs()
        maximize = -1.0 if self.maximize else 1.0
        total = sum_over_steps(objective)

        def masked():
            if dones is None:
                counted = jnp.ones(objective.shape, bool)
                ended = jnp.zeros((2 * P,), bool)
            else:
                # Index reductions as a plain min of masked step indices: XLA's
                # argmax is a two-operand reduction that CPU backends do not
                # vectorise. The step that reports ``done`` still belongs to
                # the old episode; the steps after it belong to no episode
                # (the particle starts its next one at the next window).
                steps = jnp.arange(W)[:, None]
                first_done = jnp.min(jnp.where(dones, steps, W), axis=0)
                counted = steps <= first_done[None, :]
                ended = first_done < W
            finite = jnp.isfinite(objective)
            bad = counted & ~finite
            valid_pairs = ~(bad[:, :P] | bad[:, P:])
            used = counted & jnp.concatenate([valid_pairs, valid_pairs], axis=1)
            num_finite = jnp.sum(sum_over_steps(counted & finite))
            finite_counted = jnp.where(counted & finite, objective, 0.0)
            # Counts as float sums are exact below 2^24 entries per particle;
            # the mean divides before summing so that huge finite losses
            # cannot overflow it.
            return WindowStatistics(
                current=sign * sum_over_steps(jnp.where(used, objective, 0.0)),
                num_valid=jnp.sum(sum_over_steps(valid_pairs)).astype(jnp.int32),
                ended=ended,
                num_finite=num_finite.astype(jnp.int32),
                num_counted=jnp.sum(sum_over_steps(counted)).astype(jnp.int32),
                finite_loss_mean=jnp.sum(sum_over_steps(finite_counted / num_finite)) * maximize,
            )

        usual = jnp.all(jnp.isfinite(total))
        if dones is not None:
            # The max of the flags as bytes: on CPU several times cheaper than
            # any() or a float conversion.
            usual = usual & (jnp.max(dones.astype(jnp.uint8)) == 0)
        return jax.lax.cond(usual, lambda: self._unmasked_statistics(total), masked)

    def _unmasked_statistics(self, total: jax.Array) -> WindowStatistics:
        """The statistics of a window without non-finite losses or ``done`` flags.

        ``total``: (2P,) column sums of the window's objective (losses, negated
        when maximising).
        """
        W, P = self.truncation_length, self.num_pairs
        return WindowStatistics(
            current=self._signs() * total,
            num_valid=jnp.int32(W * P),
            ended=jnp.zeros((2 * P,), bool),
            num_finite=jnp.int32(W * 2 * P),
            num_counted=jnp.int32(W * 2 * P),
            finite_loss_mean=jnp.sum(total / (W * 2 * P)) * (-1.0 if self.maximize else 1.0),
        )

    def _gradient(self, stats: WindowStatistics, current, accumulator, state) -> jax.Array:
        """``1/(2 N_valid) sum_p sum_s sign_p l_{p,s} w_{p,s}``, flat (d,).

        ``w_{p,s} = c_p + a_p`` for every counted step (Eq. of the module
        docstring), where ``c_p = e_p / std_p^2`` is the particle's current
        block and ``a_p`` its accumulator (PES, GPES). A step after the
        particle's ``done`` is not counted: the Stein weight of a step never
        holds noise drawn before its episode began. Summing over steps first
        leaves one number per particle: the cost is O(P d).
        """
        P = self.num_pairs
        shares_block = jnp.all(state.noise_ids[:P] == state.noise_ids[P:]) & jnp.all(
            state.noise_std[:P] == state.noise_std[P:]
        )
        weight = current
        if self.accumulates:
            weight = current + accumulator
            shares_block = shares_block & jnp.all(accumulator[:P] == accumulator[P:])
        gradient = _pairwise_product(stats.current, weight, shares_block)
        return gradient / (2.0 * jnp.maximum(stats.num_valid, 1))

    # -- episode bookkeeping --------------------------------------------------------
    def _end_window(self, key, state: OnlineState, inner_state, ended, current) -> OnlineState:
        """Advances time, ends episodes and updates the accumulator after a window.

        1. time: ``t + W``; 0 where the particle's episode ended inside the
           window (a ``done``): its next episode starts at the next window.
        2. TES: the negative partner takes over the positive partner's state.
        3. episode ends: particles with a ``done`` in the window and particles
           at ``t >= T`` restart from ``init_inner`` (a pair-shared key) at
           ``t = 0``; the next ``ask`` draws their fresh noise.
        4. accumulator: cleared where an episode ended; then, where the next
           ``ask`` will redraw, the current block joins it if the particle's
           episode has already used it (``t > 0``).
        """
        P, W = self.num_pairs, self.truncation_length
        redrawn = self._redraw(
            state.time, state.noise_age, state.generation_counter.is_zero()
        )  # as ask decided
        time = jnp.where(ended, 0, _saturating_add(state.time, W))

        if self.branches_from_positive:
            positive_half = lambda x: jnp.concatenate([x[:P], x[:P]])
            inner_state = jax.tree_util.tree_map(positive_half, inner_state)
            time, ended = positive_half(time), positive_half(ended)

        if self.horizon is not None:
            ended = ended | (time >= self.horizon)
            time = jnp.where(ended, 0, time)
        inner_state = self._reset_inner(key, inner_state, ended)

        state = state.replace(
            inner_state=inner_state,
            time=time,
            noise_age=_saturating_add(jnp.where(redrawn, 0, state.noise_age), W),
            generation_counter=state.generation_counter.add(1),
        )
        if self.accumulates:
            redraw = self._redraw(state.time, state.noise_age, state.generation_counter.is_zero())
            joins = (redraw & (time > 0))[:, None]
            accumulator = jnp.where(ended[:, None], 0.0, state.accumulator)
            accumulator = accumulator + jnp.where(joins, current, 0.0)
            state = state.replace(accumulator=accumulator)
        return state

    def _float32_tree(self, flat: jax.Array) -> PyTree:
        """The solution's pytree structure with float32 leaves: what the optimizer sees.

        Keeping the optimizer in float32 (like the flat mean) lets pytree-aware
        transformations (masks, per-leaf labels) work without float16 or
        bfloat16 leaves overflowing in the update.
        """
        offsets = np.cumsum((0,) + self.spec.sizes)
        leaves = [
            flat[start:stop].reshape(shape)
            for start, stop, shape in zip(offsets[:-1], offsets[1:], self.spec.shapes, strict=True)
        ]
        return jax.tree_util.tree_unflatten(self.spec.treedef, leaves)

    def _fresh_inner(self, key) -> PyTree:
        if self.init_inner is None:
            return None
        return jax.vmap(self.init_inner)(pair_keys(key, self.num_pairs))

    def _reset_inner(self, key, inner_state, reset: jax.Array) -> PyTree:
        """Replaces the inner state of particles with ``reset`` by a fresh one."""
        if self.init_inner is None:
            return inner_state
        return jax.lax.cond(
            jnp.any(reset),
            lambda inner: self._replace_inner(key, inner, reset),
            lambda inner: inner,
            inner_state,
        )

    def _replace_inner(self, key, inner_state, reset: jax.Array) -> PyTree:
        """``inner_state`` with the particles where ``reset`` holds restarted from ``init_inner``.

        Builds fresh states for every particle (pair-shared keys) and selects:
        :meth:`_reset_inner` runs it only in windows where some particle resets.
        """
        pick = lambda new, old: jnp.where(
            reset.reshape((-1,) + (1,) * (old.ndim - 1)), new, old
        ).astype(old.dtype)
        return jax.tree_util.tree_map(pick, self._fresh_inner(key), inner_state)

    def _signs(self) -> jax.Array:
        """(2P,) +1 for the first half of the particles, -1 for the second."""
        return jnp.repeat(jnp.array([1.0, -1.0], jnp.float32), self.num_pairs)

    def _standard_noise(self, state: OnlineState) -> jax.Array:
        """(2P, d) standard normals ``z`` of the particles' current blocks (``e = sign * std * z``).

        Partners in step hold the same id; then only P vectors are generated.
        """
        P, d = self.num_pairs, self.num_dims
        ids = state.noise_ids
        sample = lambda ids: self.noise.sample(state.noise_state, ids, d)
        return jax.lax.cond(
            jnp.all(ids[:P] == ids[P:]),
            lambda: jnp.tile(sample(ids[:P]), (2, 1)),
            lambda: sample(ids),
        )

    def _current_block(
        self, state: OnlineState, population: PyTree | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(2P, d) unsigned Stein weight ``e / std^2 = z / std`` of each particle's block.

        Returns ``(block, mismatch)``: ``mismatch`` is True when a population
        was handed back that is not bit for bit the one ``ask`` produced
        (clipped, edited, from another ``ask``: its checksum differs, see
        :mod:`evopes.population_check`); the noise is then regenerated from
        the state's ids, so such a population never changes the estimate.

        With Gaussian noise, partners in step and the population of the last
        ``ask`` at hand, the block is read off the population antithetically,
        ``(x_i - x_{i+P}) / (2 std^2)``: one pass instead of generating the
        random bits again (which dominates at large d on CPU), and both
        partners get the bit-identical block, so equal partner losses cancel
        exactly.
        """
        std = state.noise_std[:, None]
        regenerate = lambda: self._standard_noise(state) / std
        if population is None or not readable_from_population(self.noise, self.spec):
            return regenerate(), jnp.array(False)
        P = self.num_pairs
        flat = self.spec.ravel_population(population, self.population_size)
        mismatch = population_checksum(flat) != state.population_checksum
        if self.num_dims <= REGENERATE_UP_TO_DIMS:
            # Small theta: regenerating the noise costs less than the branch of
            # the read below (Lorenz, d = 2: PES's tell took 1.4x the bare unroll
            # with the read, 1.02x without). Partners with one id and std get the
            # bit-identical block.
            return regenerate(), mismatch
        in_step = jnp.all(state.noise_ids[:P] == state.noise_ids[P:]) & jnp.all(
            state.noise_std[:P] == state.noise_std[P:]
        )
        half_difference = 0.5 * (flat[:P] - flat[P:])
        read = lambda: jnp.tile(half_difference / std[:P] / std[:P], (2, 1))
        # Divide twice: std^2 underflows float32 for std below ~1e-19.
        block = jax.lax.cond(in_step & ~mismatch, read, regenerate)
        return block, mismatch

    # -- accessors and validation -----------------------------------------------
    def get_inner_state(self, state: OnlineState) -> PyTree:
        """The particles' inner states, leading axis ``2P``."""
        return state.inner_state

    def total_steps(self, state: OnlineState) -> int:
        """Particle-steps unrolled so far, exact (``2P W`` per window); on the host."""
        return int(state.generation_counter) * self.num_particles * self.truncation_length

    def sequential_steps(self, state: OnlineState) -> int:
        """Steps unrolled so far along one particle, exact (``W`` per window); on the host."""
        return int(state.generation_counter) * self.truncation_length

    def get_time(self, state: OnlineState) -> jax.Array:
        """(2P,) each particle's step within its episode at the start of the next window."""
        return state.time

    def get_best_solution(self, state: OnlineState) -> PyTree:
        raise NotImplementedError(
            f"{type(self).__name__}: online strategies track no best solution (window losses "
            "come from different times of different episodes); use get_mean"
        )

    def _check_call(self, key, state, params) -> None:
        """ValueErrors naming the argument for a key, state or params of the wrong kind."""
        check_key(key)
        if not isinstance(state, OnlineState):
            raise ValueError(
                f"state: expected the OnlineState of {type(self).__name__}.init/ask, "
                f"got {type(state).__name__}"
            )
        if jnp.shape(state.mean) != (self.num_dims,) or jnp.shape(state.time) != (
            self.population_size,
        ):
            raise ValueError(
                f"state: expected a state of this strategy (mean ({self.num_dims},), "
                f"{self.population_size} particles), got mean {jnp.shape(state.mean)} and "
                f"time {jnp.shape(state.time)}"
            )
        self._check_params_type(params)

    def _check_window_array(self, array, name: str) -> jax.Array:
        if not isinstance(array, jax.Array | np.ndarray | list | tuple | float | int):
            raise ValueError(
                f"{name}: expected an array of shape (W, 2P) = "
                f"{(self.truncation_length, self.population_size)}, got {type(array).__name__}"
            )
        array = jnp.asarray(array)
        expected = (self.truncation_length, self.population_size)
        if array.shape != expected:
            raise ValueError(
                f"{name}: expected shape (W, 2P) = {expected}, got {tuple(array.shape)}"
            )
        if name == "losses":
            if not (
                jnp.issubdtype(array.dtype, jnp.floating)
                or jnp.issubdtype(array.dtype, jnp.integer)
            ):
                raise ValueError(f"losses: expected a real dtype, got {array.dtype}")
            array = array.astype(jnp.float32)
        return array

    def _check_inner_state(self, inner_state, state: OnlineState) -> PyTree:
        if self.init_inner is None:
            return state.inner_state if inner_state is None else inner_state
        if inner_state is None:
            raise ValueError(
                "inner_state: expected the particles' inner states after the window "
                "(tell(..., inner_state=...)), got None"
            )
        expected, received = (
            jax.tree_util.tree_structure(state.inner_state),
            jax.tree_util.tree_structure(inner_state),
        )
        if expected != received:
            raise ValueError(f"inner_state: expected pytree structure {expected}, got {received}")
        old_leaves, new_leaves = (
            jax.tree_util.tree_leaves(state.inner_state),
            jax.tree_util.tree_leaves(inner_state),
        )
        for index, (old, new) in enumerate(zip(old_leaves, new_leaves, strict=True)):
            if jnp.shape(old) != jnp.shape(new):
                raise ValueError(
                    f"inner_state: leaf {index} expected shape {jnp.shape(old)}, "
                    f"got {jnp.shape(new)}"
                )
        return jax.tree_util.tree_map(
            lambda old, new: jnp.asarray(new, old.dtype), state.inner_state, inner_state
        )


#: Where per-particle step counters stop growing: far beyond any horizon or
#: noise period, and far from int32's wrap at 2^31.
_SATURATION = 2**30


def _saturating_add(counter: jax.Array, increment: int) -> jax.Array:
    """``min(counter + increment, 2^30)`` in int32: a clock that never wraps."""
    return jnp.minimum(counter, _SATURATION - increment) + increment


def _pairwise_product(
    coefficients: jax.Array, vectors: jax.Array, partners_share: jax.Array
) -> jax.Array:
    """``coefficients @ vectors`` over 2P particles, partners first combined where they can be.

    When partner p and p + P hold the same vector (the usual case: a pair
    shares its noise block and accumulator), ``(c_p + c_{p+P}) v_p`` makes
    equal partner losses cancel exactly, before the multiplication by v ~ 1 /
    sigma; the particle-by-particle sum would leave a rounding residue of order
    eps * l / sigma (large for a tiny sigma), and costs twice the flops.
    """
    P = coefficients.shape[0] // 2
    return jax.lax.cond(
        partners_share,
        lambda: (coefficients[:P] + coefficients[P:]) @ vectors[:P],
        lambda: coefficients @ vectors,
    )
