"""MkDocs hook: fail ``mkdocs build --strict`` on pages that would not render as meant.

Each finished page is checked for what the other hooks exist to prevent; a
finding is a warning, which ``--strict`` (as CI runs it) turns into a failed
build:

* a script loaded from another site (a CDN): the site must work offline;
* TeX left as text, where ``docs/hooks/mathml.py`` did not produce MathML;
* reStructuredText shown literally: a Sphinx role (``:class:`` before code),
  a literal-block ``::`` closing a paragraph, or a simple table's ``====``
  border, which ``docs/hooks/rst_docstrings.py`` converts in docstrings.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(f"mkdocs.hooks.{__name__}")

PROBLEMS = {
    "a script from another site": re.compile(r"<script[^>]+src=\"(?:https?:)?//[^\"]+\""),
    "TeX not rendered as MathML": re.compile(r'class="arithmatex">\s*\\[(\[]'),
    "a literal Sphinx role": re.compile(
        r"(?<![\w`]):(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const|math|ref):(?:<code>|`)"
    ),
    "a literal-block marker '::'": re.compile(r"\w::</p>"),
    "an RST table border": re.compile(r"<p>\s*={3,}(?: +={3,})+"),
}


def find_problems(page_html: str) -> list[str]:
    """The kinds of problem found in a page's final HTML, each with its first occurrence."""
    found = []
    for what, pattern in PROBLEMS.items():
        if match := pattern.search(page_html):
            found.append(f"{what}: {match.group(0)[:80]!r}")
    return found


def on_post_page(output: str, page, config) -> str:  # noqa: ARG001
    for problem in find_problems(output):
        log.warning("%s: %s", page.file.src_uri, problem)
    return output
