"""Truncated ES (TES): fresh noise every window, partners branch from one shared state.

Each window, pair ``i`` draws a fresh perturbation ``e_i`` and both partners
start from the same inner state ``s``; the estimate weights the window's
losses by ``e_i`` alone,

    g = 1 / (P W) * sum_i sum_s (l_s(theta + e_i; s) - l_s(theta - e_i; s)) e_i / (2 sigma^2),

the ES gradient of the truncated loss of the window with the start state held
fixed. The influence of ``theta`` on ``s`` (through all earlier windows) is
ignored, so TES is **biased** for the full unrolled loss: it is the online
ES analogue of truncated backpropagation through time (Vicol et al. 2021,
where it is the baseline that PES corrects).

How the shared state advances (``branch``) differs between public
implementations:

* ``"positive"`` (default, ``2PW`` steps per estimate): at every window end
  the negative partner's inner state (and time) is replaced by the positive
  partner's. The shared state is then reached with a sequence of perturbed
  parameters ``theta + e_1, theta + e_2, ...``.
* ``"unperturbed"`` (the papers' TES, the "3PW" variant of the NRES paper's
  code): every pair also unrolls an unperturbed particle with ``theta``, and
  both partners start each window from the state it reached. ``ask`` then
  returns ``3P`` rows (``theta + e``, ``theta - e``, ``theta``), the user's
  loop runs all of them (``losses`` and ``dones`` of shape ``(W, 3P)``, inner
  states with leading axis ``3P``), and the estimate uses the first ``2P``.
  The shared state follows ``theta`` itself, as in truncated backprop.

Both are biased the same way: neither sees how theta shaped the window's
start state (influence balancing: both move theta the wrong way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evopes.compiled import compiled_method
from evopes.online.engine import OnlineES, OnlineState

BRANCHES = ("positive", "unperturbed")


class TES(OnlineES):
    """Truncated ES: fresh noise each window, no accumulation; see :class:`evopes.OnlineES`.

    Args:
      branch: ``"positive"`` (2PW: the negative partner takes the positive
        partner's state) or ``"unperturbed"`` (3PW: an unperturbed particle
        per pair carries the shared state; ``ask`` returns ``3P`` rows).
      (the rest as :class:`evopes.OnlineES`)
    """

    accumulates = False

    def __init__(self, *args, branch: str = "positive", **kwargs):
        super().__init__(*args, **kwargs)
        if branch not in BRANCHES:
            raise ValueError(f"branch: expected one of {BRANCHES}, got {branch!r}")
        self.branch = branch

    @property
    def branches_from_positive(self) -> bool:
        return self.branch == "positive"

    @property
    def num_particles(self) -> int:
        return (
            self.population_size * 3 // 2 if self.branch == "unperturbed" else self.population_size
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", branch={self.branch!r})"

    def _redraw(self, time, noise_age, first) -> jax.Array:
        return jnp.ones((self.population_size,), bool)

    # -- the unperturbed branch: 3P particles outside, 2P inside the engine ----------
    @compiled_method(before=lambda self, key, mean, params: self.validate_params(params))
    def init(self, key, mean, params) -> OnlineState:
        state = super().init(key, mean, params)
        return state.replace(inner_state=self._with_unperturbed(state.inner_state))

    @compiled_method()
    def ask(self, key, state, params):
        population, state = super().ask(key, self._perturbed_only(state), params)
        if self.branch == "unperturbed":
            mean = self.spec.unravel(state.mean)
            population = jax.tree_util.tree_map(
                lambda rows, centre: jnp.concatenate(
                    [rows, jnp.broadcast_to(centre, (self.num_pairs,) + centre.shape)]
                ).astype(rows.dtype),
                population,
                mean,
            )
        return population, state.replace(inner_state=self._with_unperturbed(state.inner_state))

    @compiled_method(static_argnames=("apply_update",))
    def tell(
        self,
        key,
        population,
        losses,
        state,
        params,
        *,
        inner_state=None,
        dones=None,
        apply_update=True,
    ):
        if self.branch == "positive":
            return super().tell(
                key,
                population,
                losses,
                state,
                params,
                inner_state=inner_state,
                dones=dones,
                apply_update=apply_update,
            )
        P = self.num_pairs
        losses = self._check_rows(losses, "losses")
        # Both partners continue from the unperturbed particle's state, and its
        # episode ends are theirs.
        shared = lambda x: jnp.concatenate([x[2 * P :], x[2 * P :]])
        if dones is not None:
            dones = shared(jnp.asarray(self._check_rows(dones, "dones")).T).T
        if inner_state is not None:
            inner_state = jax.tree_util.tree_map(shared, inner_state)
        if population is not None:
            population = jax.tree_util.tree_map(lambda x: x[: 2 * P], population)
        state, metrics = super().tell(
            key,
            population,
            losses[:, : 2 * P],
            self._perturbed_only(state),
            params,
            inner_state=inner_state,
            dones=dones,
            apply_update=apply_update,
        )
        return state.replace(inner_state=self._with_unperturbed(state.inner_state)), metrics

    def _check_rows(self, array, name):
        array = jnp.asarray(array)
        expected = (self.truncation_length, self.num_particles)
        if array.shape != expected:
            raise ValueError(f"{name}: expected shape (W, 3P) = {expected}, got {array.shape}")
        return array

    def _with_unperturbed(self, inner_state):
        """2P inner states -> 3P: the unperturbed particles start where the pairs do."""
        if self.branch == "positive" or inner_state is None:
            return inner_state
        P = self.num_pairs
        return jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x[:P]]), inner_state)

    def _perturbed_only(self, state: OnlineState) -> OnlineState:
        if self.branch == "positive" or state.inner_state is None:
            return state
        P = self.num_pairs
        return state.replace(
            inner_state=jax.tree_util.tree_map(lambda x: x[: 2 * P], state.inner_state)
        )
