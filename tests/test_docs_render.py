"""The documentation renders as meant: formulas as MathML with no CDN script, docstrings'
reStructuredText as Markdown, and the porting page's examples run.

The build-time hooks live in ``docs/hooks/``; their tests need the ``docs`` extra
(``pip install -e ".[docs]"``) and are skipped without it. The porting page's code runs
with the library alone.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks"


def _load_hook(name: str):
    """A hook module from docs/hooks, or a skip when the docs extra is not installed."""
    for dependency in ("mkdocs", "griffe", "latex2mathml"):
        pytest.importorskip(dependency, reason='needs the docs extra: pip install -e ".[docs]"')
    spec = importlib.util.spec_from_file_location(f"evopes_docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _built_site(tmp_root: str) -> Path:
    site = Path(tmp_root) / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The whole site, built once with ``mkdocs build --strict`` (a few seconds)."""
    _load_hook("checks")  # skips without the docs extra
    return _built_site(str(tmp_path_factory.mktemp("docs")))


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


# -- the built site ----------------------------------------------------------------------------
def test_no_page_loads_a_script_from_another_site(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=\"(?:https?:)?//", text), page
        assert "mathjax" not in text.lower() and "katex" not in text.lower(), page


def test_formulas_are_mathml_with_their_tex(site):
    cma = _page(site, "strategies/cma_es")
    assert cma.count("<math ") > 50
    assert not re.search(r'class="arithmatex">\s*\\[(\[]', cma)  # no TeX left as text
    # \mathcal N is drawn as the Unicode script letter (MathML Core has no mathvariant).
    assert "\U0001d4a9" in cma and 'mathvariant="script"' not in cma
    # The aligned update equations are a table whose columns keep their alignment.
    assert '<mtd style="text-align: right' in cma
    assert 'encoding="application/x-tex"' in cma
    # A display formula of a Markdown page, and a table cell with |.| inside math.
    online = _page(site, "concepts/online_es")
    assert re.search(r'<div class="arithmatex"><math [^>]*display="block"', online)
    assert "\\sum_j \\lvert w&#x27;_j\\rvert^+" in cma or "\\lvert w'_j\\rvert^+" in cma


def test_docstring_roles_become_links_or_code(site):
    for name in [
        "api/core",
        "api/envs",
        "api/online",
        "api/reliability",
        "api/strategies",
        "api/tasks",
        "concepts/online_es",
        "strategies/cma_es",
    ]:
        text = _page(site, name)
        assert not re.search(r":(?:class|meth|func|mod|data|attr):(?:<code>|`)", text), name
        assert "::</p>" not in text, name
    online = _page(site, "api/online")
    # :class:`evopes.TES` in OnlineES's docstring links to TES's entry.
    assert re.search(
        r'<a class="autorefs[^"]*"[^>]*href="#evopes\.online\.tes\.TES"><code>'
        r"evopes\.TES</code></a>",
        online,
    )
    # A target that is not rendered anywhere (a private method) stays code, unlinked.
    assert "<code>OnlineES._end_window</code>" in online
    # The literal block of OnlineES is highlighted Python.
    assert "The raw loop, the primary interface:</p>" in online


def test_the_online_strategies_table_is_a_table(site):
    online = _page(site, "api/online")
    assert "=====" not in online
    table = online[online.index("<th>strategy</th>") :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    assert [row[0] for row in cells] == ["TES", "PES", "GPES(K)", "NRES"]
    # The continuation line joins the GPES row.
    assert cells[2][1] == "when its noise is K steps old, or its episode (re)starts"


def test_the_porting_page_is_in_the_navigation(site):
    home = (site / "index.html").read_text()
    assert 'href="porting/"' in home
    porting = _page(site, "porting")
    for alias in ("CMA_ES", "Sep_CMA_ES", "Open_ES"):
        assert f'id="{alias.lower()}"' in porting


# -- the conversions, on text -------------------------------------------------------------------
def test_roles_resolve_or_fall_back_to_code():
    rst = _load_hook("rst_docstrings")
    known = {"evopes.OnlineES": "evopes.online.engine.OnlineES", "OnlineES.tell": "e.OnlineES.tell"}
    text = rst.convert_roles(
        "See :class:`evopes.OnlineES`, :meth:`~OnlineES.tell`, :func:`jax.jit`, "
        ":py:class:`Two <evopes.OnlineES>`, :math:`\\sigma^2` and `optax <https://x.org>`_.",
        known.get,
    )
    assert text == (
        'See <autoref identifier="evopes.online.engine.OnlineES" optional>'
        "<code>evopes.OnlineES</code></autoref>, "
        '<autoref identifier="e.OnlineES.tell" optional><code>tell</code></autoref>, '
        "`jax.jit`, "
        '<autoref identifier="evopes.online.engine.OnlineES" optional><code>Two</code></autoref>, '
        "$\\sigma^2$ and [optax](https://x.org)."
    )


def test_simple_table_with_a_continued_row():
    rst = _load_hook("rst_docstrings")
    text = "\n".join(
        [
            "Schedules:",
            "",
            "====  =========  ====",
            "name  when       acc",
            "====  =========  ====",
            "TES   always     none",
            "GPES  every K    yes",
            "      steps",
            "====  =========  ====",
            "",
            "After.",
        ]
    )
    assert rst.rst_to_markdown(text) == "\n".join(
        [
            "Schedules:",
            "",
            "| name | when | acc |",
            "| --- | --- | --- |",
            "| TES | always | none |",
            "| GPES | every K steps | yes |",
            "",
            "After.",
        ]
    )


def test_literal_blocks_directives_and_stray_argument_lines():
    rst = _load_hook("rst_docstrings")
    text = "\n".join(
        [
            "Usage::",
            "",
            "    x = f(1)",
            "    if x:",
            "        g()",
            "",
            "Args:",
            "  a: the first.",
            "    More about a.",
            "  (the rest as :class:`Base`)",
            "",
            ".. math::",
            "",
            "   g = \\frac{1}{2}",
            "",
            ".. note:: Read this.",
        ]
    )
    assert rst.rst_to_markdown(text) == "\n".join(
        [
            "Usage:",
            "",
            "```python",
            "x = f(1)",
            "if x:",
            "    g()",
            "```",
            "",
            "Args:",
            "  a: the first.",
            "    More about a.",
            "",
            "(the rest as `Base`)",
            "",
            "$$",
            "g = \\frac{1}{2}",
            "$$",
            "",
            "!!! note",
            "    Read this.",
        ]
    )


def test_tex_to_mathml():
    mathml = _load_hook("mathml")
    inline = mathml.tex_to_mathml(r"\mathcal N(0, \mathbb R^n) \boldsymbol{\mu}", display=False)
    assert inline.startswith('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">')
    assert "mathvariant" not in inline
    # script N, double-struck R, bold italic mu
    assert "\U0001d4a9" in inline and "\u211d" in inline and "\U0001d741" in inline
    block = mathml.tex_to_mathml(r"\begin{aligned} a &= b && (1) \\ c &= d \end{aligned}", True)
    assert block.count("<mtr>") == 2 and "text-align: left" in block
    assert r"\begin{aligned}" in block  # the annotation keeps the source
    for unsupported in (r"\unknowncommand x", "a & b"):
        with pytest.raises(ValueError, match="unsupported TeX"):
            mathml.tex_to_mathml(unsupported, display=False)
    page = '<p>x <span class="arithmatex">\\(a &lt; b\\)</span></p>'
    assert "<mo>&lt;</mo>" in mathml.render_math(page) or "&#x0003C;" in mathml.render_math(page)


def test_checks_flag_what_the_hooks_prevent():
    checks = _load_hook("checks")
    assert checks.find_problems("<p>Use :class:<code>evopes.OnlineES</code></p>")
    assert checks.find_problems('<script src="https://unpkg.com/mathjax@3/es5/tex.js"></script>')
    assert checks.find_problems('<span class="arithmatex">\\(x\\)</span>')
    assert checks.find_problems("<p>The loop::</p>")
    assert checks.find_problems("<p>====  ====\na  b</p>")
    assert not checks.find_problems('<p><a href="x"><code>OnlineES</code></a></p><math></math>')


# -- the porting page -----------------------------------------------------------------------------
#: evosax 0.3's algorithm names (``evosax.algorithms.__all__``, 0.3.2).
EVOSAX_ALGORITHMS = (
    "ARS ASEBO CMAAnchoredLES CMA_ES CR_FM_NES DES DifferentialEvolution DiffusionEvolution "
    "ESMC EvoTF_ES GESMR_GA GradientlessDescent GuidedES HillClimbing LES LGA LM_MA_ES MA_ES "
    "MR15_GA NoiseReuseES Open_ES PGPE PSO PersistentES RandomSearch Rm_ES SAMR_GA SNES "
    "SV_CMA_ES SV_Open_ES Sep_CMA_ES SimpleES SimpleGA SimulatedAnnealing iAMaLGaM_Full "
    "iAMaLGaM_Univariate xNES"
).split()


def test_porting_page_covers_every_alias():
    """Every evosax name that evopes exports has a row in the aliases table and a section."""
    import evopes

    page = (ROOT / "docs" / "porting.md").read_text()
    table = page[page.index("## Aliases") :]
    table = table[: table.index("\n\n", table.index("| evosax"))]
    rows = {row.split("|")[1].strip().strip("`") for row in table.splitlines()[3:]}
    headings = set(re.findall(r"^### (.+)$", page, re.MULTILINE))
    exported = {name for name in EVOSAX_ALGORITHMS if hasattr(evopes, name)}
    assert {"CMA_ES", "Sep_CMA_ES", "Open_ES"} <= exported
    for name in sorted(exported):
        assert name in rows, f"docs/porting.md: no row for evopes.{name} in the aliases table"
        assert any(name in heading for heading in headings), (
            f"docs/porting.md: no '### {name}' section"
        )


def test_porting_page_examples_run(tmp_path):
    page = (ROOT / "docs" / "porting.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert blocks
    for number, code in enumerate(blocks):
        script = tmp_path / f"porting_{number}.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"block {number}:\n{code}\n{result.stderr[-3000:]}"
    best = float(result.stdout.split()[0])
    assert best < 1e-8
