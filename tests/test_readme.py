"""The README's code runs as written, and its test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs(number, tmp_path):
    """Each block as written, on its own, in a fresh interpreter outside the checkout."""
    code = PYTHON_BLOCKS[number]
    online = "evopes.NRES" in code
    if online:  # also check the snippet's claim, after it ran unchanged
        code += '\nprint("LOG_LR", float(es.get_mean(state)["log_lr"]))\n'
    script = tmp_path / f"readme_{number}.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"README python block {number} failed:\n{code}\n{result.stderr[-3000:]}"
    )
    assert result.stdout.strip()  # each block prints its result
    if online:  # exp(log_lr) ends near the optimal inner step size 1
        assert -0.5 < float(result.stdout.split("LOG_LR")[-1]) < 0.5


def test_readme_commands_match_ci():
    """The first two command lines stay as they are, and the second is CI's test command."""
    commands = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert commands[0].startswith("pip install -e . && python -m evopes demo")
    assert commands[1].startswith('pip install -e ".[test]" && python -m pytest -n 2 -q')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -n 2 -q' in ci
    assert 'pip install -e ".[docs]"' in README and "mkdocs build" in README
