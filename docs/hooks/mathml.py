"""MkDocs hook: render the site's TeX as MathML at build time, so formulas need no script.

``pymdownx.arithmatex`` (generic mode) marks the formulas of every page and
docstring, ``$...$`` as ``<span class="arithmatex">\\(...\\)</span>`` and
``$$...$$`` as ``<div class="arithmatex">\\[...\\]</div>``. This hook replaces
each by the MathML that ``latex2mathml`` (a pure-Python package, installed by
the ``docs`` extra) converts it to. Browsers draw MathML natively, so the built
site shows its formulas offline, from ``file://``, with no MathJax or KaTeX
script and no network. The TeX source stays in the page as the formula's
``application/x-tex`` annotation (copy-paste, screen readers).

latex2mathml writes MathML 3; Chromium implements MathML Core, which drops a
few of its presentation attributes. They are rewritten into what Core draws:
``mathvariant`` other than ``normal`` (``\\mathcal``, ``\\mathbb``, ``\\mathbf``)
becomes the Unicode mathematical letters (``\\mathcal N`` -> U+1D4A9), a table
cell's ``columnalign`` and its table's ``columnspacing`` (``align`` environments)
become CSS, and named or negative ``mspace`` widths become lengths.

A formula latex2mathml cannot convert is a warning, so ``mkdocs build
--strict`` fails on it rather than shipping raw TeX.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
import xml.etree.ElementTree as ET

from latex2mathml.converter import convert

log = logging.getLogger(f"mkdocs.hooks.{__name__}")

_ARITHMATEX_RE = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.DOTALL
)
_MATH_RE = re.compile(r"^<math (?P<attrs>[^>]*)>(?P<body>.*)</math>$", re.DOTALL)
_VARIANT_RE = re.compile(r'<mi mathvariant="(?P<variant>[a-z-]+)">(?P<text>[^<]*)</mi>')
_ENTITY_RE = re.compile(r"&#x([0-9A-Fa-f]+);")

#: Unicode name prefix of each ``mathvariant`` (Mathematical Alphanumeric Symbols).
_VARIANT_PREFIX = {
    "bold": "MATHEMATICAL BOLD",
    "italic": "MATHEMATICAL ITALIC",
    "bold-italic": "MATHEMATICAL BOLD ITALIC",
    "script": "MATHEMATICAL SCRIPT",
    "bold-script": "MATHEMATICAL BOLD SCRIPT",
    "fraktur": "MATHEMATICAL FRAKTUR",
    "bold-fraktur": "MATHEMATICAL BOLD FRAKTUR",
    "double-struck": "MATHEMATICAL DOUBLE-STRUCK",
    "sans-serif": "MATHEMATICAL SANS-SERIF",
    "bold-sans-serif": "MATHEMATICAL SANS-SERIF BOLD",
    "monospace": "MATHEMATICAL MONOSPACE",
}
#: Letters that Unicode had before the Mathematical Alphanumeric block (its "holes").
_LETTERLIKE = {
    "script": "SCRIPT",
    "fraktur": "BLACK-LETTER",
    "double-struck": "DOUBLE-STRUCK",
}


#: Environments latex2mathml does not know, and the equivalent one it does.
_ENVIRONMENTS = {
    "aligned": ("\\begin{align*}", "\\end{align*}"),
    "split": ("\\begin{align*}", "\\end{align*}"),
    "gathered": ("\\begin{array}{c}", "\\end{array}"),
}
_ENVIRONMENT_RE = re.compile(r"\\(begin|end)\{(" + "|".join(_ENVIRONMENTS) + r")\}")
#: What latex2mathml leaves behind for TeX it did not understand.
_UNCONVERTED_RE = re.compile(r"<(mi|mo|mtext)>(\\[A-Za-z]+|&amp;|&)</\1>|<merror")


def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML for one formula (TeX without its delimiters).

    Raises ValueError for TeX that latex2mathml leaves unconverted (an unknown
    command, a stray alignment ``&``).
    """
    source = tex
    tex = _ENVIRONMENT_RE.sub(lambda m: _ENVIRONMENTS[m[2]][m[1] == "end"], tex)
    mathml = convert(tex, display="block" if display else "inline")
    if unconverted := _UNCONVERTED_RE.search(mathml):
        raise ValueError(f"unsupported TeX, left as {unconverted.group(0)!r}")
    mathml = _VARIANT_RE.sub(_styled_letters, mathml)
    mathml = to_mathml_core(mathml)
    match = _MATH_RE.match(mathml)
    if match is None:  # pragma: no cover - latex2mathml always wraps in <math>
        return mathml
    annotation = f'<annotation encoding="application/x-tex">{html.escape(source)}</annotation>'
    return (
        f"<math {match['attrs']}><semantics><mrow>{match['body']}</mrow>"
        f"{annotation}</semantics></math>"
    )


_NAMED_SPACES = {
    "veryverythinmathspace": 0.0556,
    "verythinmathspace": 0.1111,
    "thinmathspace": 0.1667,
    "mediummathspace": 0.2222,
    "thickmathspace": 0.2778,
    "verythickmathspace": 0.3333,
    "veryverythickmathspace": 0.3889,
}
_XMLNS = ' xmlns="http://www.w3.org/1998/Math/MathML"'


def to_mathml_core(mathml: str) -> str:
    """Rewrites table alignment and spacing attributes of MathML 3 into CSS MathML Core draws."""
    if "<mtable" not in mathml and "mathspace" not in mathml:
        return mathml
    root = ET.fromstring(mathml.replace(_XMLNS, "", 1))
    for table in root.iter("mtable"):
        spacing = (table.attrib.pop("columnspacing", None) or "").split()
        rowspacing = (table.attrib.pop("rowspacing", None) or "").split()
        vertical = rowspacing[0] if rowspacing else "0.2em"
        for row in table.findall("mtr"):
            for column, cell in enumerate(row.findall("mtd")):
                styles = []
                if align := cell.attrib.pop("columnalign", None):
                    styles.append(f"text-align: {align}")
                if spacing:
                    left = spacing[(column - 1) % len(spacing)] if column else "0em"
                    styles.append(f"padding: {vertical} 0em 0em {left}")
                if styles:
                    cell.set("style", "; ".join(styles))
    for parent in root.iter():
        for space in list(parent):
            if space.tag != "mspace" or "width" not in space.attrib:
                continue
            width = space.get("width")
            if width.startswith("negative") or width.startswith("-"):
                parent.remove(space)  # a negative space: Core has none, and it is cosmetic
            elif width in _NAMED_SPACES:
                space.set("width", f"{_NAMED_SPACES[width]}em")
    text = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return text.replace("<math", "<math" + _XMLNS, 1)


def render_math(page_html: str, where: str = "") -> str:
    """Replaces every arithmatex formula of a page's HTML by MathML."""

    def replace(match: re.Match) -> str:
        tex = html.unescape(match["tex"]).strip()
        display = match["tag"] == "div"
        for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
            if tex.startswith(opening) and tex.endswith(closing):
                tex = tex[len(opening) : -len(closing)]
                break
        try:
            mathml = tex_to_mathml(tex.strip(), display)
        except Exception as error:  # noqa: BLE001 - any failure is reported the same way
            log.warning("%s: cannot render the formula %r as MathML: %s", where, tex, error)
            return match.group(0)
        return f'<{match["tag"]} class="arithmatex">{mathml}</{match["tag"]}>'

    return _ARITHMATEX_RE.sub(replace, page_html)


def _styled_letters(match: re.Match) -> str:
    variant, text = match["variant"], match["text"]
    if variant == "normal" or variant not in _VARIANT_PREFIX:
        return match.group(0)
    text = _ENTITY_RE.sub(lambda m: chr(int(m.group(1), 16)), html.unescape(text))
    styled = "".join(_styled_char(char, variant) for char in text)
    return f"<mi>{html.escape(styled)}</mi>"


def _styled_char(char: str, variant: str) -> str:
    name = unicodedata.name(char, "")
    if char.isascii() and char.isdigit():
        kind = f"DIGIT {name.split()[-1]}"
    elif char.isascii() and char.isalpha():
        kind = f"{'CAPITAL' if char.isupper() else 'SMALL'} {char.upper()}"
    elif match := re.fullmatch(r"GREEK (CAPITAL|SMALL) LETTER (\w+)", name):
        kind = f"{match[1]} {match[2]}"
    else:
        return char
    candidates = (f"{_VARIANT_PREFIX[variant]} {kind}", f"{_LETTERLIKE.get(variant, '')} {kind}")
    for candidate in candidates:
        try:
            return unicodedata.lookup(candidate.strip())
        except KeyError:
            continue
    return char


# -- MkDocs events ---------------------------------------------------------------------------------
def on_page_content(html_text: str, page, config, files) -> str:  # noqa: ARG001
    return render_math(html_text, page.file.src_uri)
