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


def test_convergence_table_keeps_the_new_strategies_and_counts_seeds_that_got_there():
    def row(strategy, ours, theirs):
        return {
            "strategy": strategy,
            "function": "sphere",
            "dim": 10,
            "evopes_evals": 100.0,
            "evosax_evals": None,
            "evals_ratio": None,
            "evopes_evals_per_seed": ours,
            "evosax_evals_per_seed": theirs,
        }

    rows = [row("CMA_ES", [1, 2], [3, 4]), row("SNES", [90, None, 110], [None, None, 120])]
    (snes,) = evosax_parity.convergence_rows(rows)
    assert snes["strategy"] == "SNES" and snes["seeds"] == 3
    assert (snes["evopes_reached"], snes["evosax_reached"]) == (2, 1)
    assert (snes["evopes_evals"], snes["evosax_evals"]) == (100.0, None)
