"""evosax-parity benchmark: one cheap pair (CMA-ES, sphere, d = 10, one seed) end to end."""

import pytest

pytest.importorskip("evosax")

from evopes.bench import evosax_parity  # noqa: E402


def test_cma_es_sphere_row_has_the_issue_columns_and_both_reach_the_target():
    (pair,) = evosax_parity.available_pairs(["CMA_ES"])
    timing = evosax_parity.time_per_generation(pair, 10, quick=True)
    row = evosax_parity.parity_row(pair, "sphere", 10, [0], timing)
    for column in (
        "strategy",
        "function",
        "dim",
        "evopes_evals",
        "evosax_evals",
        "evopes_s",
        "evosax_s",
        "eager_ratio",
        "jit_ratio",
    ):
        assert column in row
    assert (row["strategy"], row["function"], row["dim"]) == ("CMA_ES", "sphere", 10)
    # Both reach f < 1e-8 well within the budget (about 1500 evaluations each).
    assert row["evopes_evals"] is not None and row["evosax_evals"] is not None
    assert row["evopes_evals"] % row["population_size"] == 0
    for column in ("evopes_s", "evosax_s", "eager_ratio", "jit_ratio"):
        assert row[column] > 0
