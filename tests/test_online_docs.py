"""The code of the online ES concepts page runs, and its PES loop finds the optimum."""

import re
from pathlib import Path

import numpy as np

PAGE = Path(__file__).resolve().parent.parent / "docs" / "concepts" / "online_es.md"


def test_concepts_page_code_runs():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    namespace = {}
    exec(compile("\n".join(blocks), str(PAGE), "exec"), namespace)
    # The time-averaged loss of s_{t+1} = 0.5 s_t + theta, (s - 1)^2 over T = 8 steps from s = 0
    # is minimised per coordinate at theta* = sum_t g_t / sum_t g_t^2, g_t = 2 (1 - 0.5^(t+1)).
    growth = np.array([2 * (1 - 0.5 ** (t + 1)) for t in range(8)])
    np.testing.assert_allclose(namespace["theta"], growth.sum() / (growth**2).sum(), atol=0.05)
    assert np.isfinite(np.asarray(namespace["metrics"]["gradient"])).all()
