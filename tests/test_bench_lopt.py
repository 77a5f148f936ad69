"""The lopt benchmark's paired comparison with the tuned Adam (the results page quotes it)."""

import numpy as np

from evopes.bench.lopt import paired_with


def test_paired_with_subtracts_the_reference_on_the_same_seed_at_the_end_of_the_run():
    # 3 fresh seeds, 2 steps: the end of the run is the last column. Seed 1 is hard for
    # everyone (0.9), so only the pairing by seed tells who is better on it.
    reference = np.array([[2.0, 0.1], [2.0, 0.9], [2.0, 0.3]])
    per_theta = [
        np.array([[1.0, 0.15], [1.0, 0.85], [1.0, 0.2]]),
        np.array([[3.0, 0.05], [3.0, 0.95], [3.0, 0.3]]),
    ]
    paired = paired_with(per_theta, reference)
    np.testing.assert_allclose(paired, [[0.05, -0.05, -0.1], [-0.05, 0.05, 0.0]], atol=1e-12)
    assert int(np.sum(paired < 0)) == 3
