"""Render reStructuredText idioms of evopes' docstrings as Markdown, at build time.

evopes' docstrings are Google style with a few reStructuredText habits that
read well in ``help()`` and in the source but that mkdocstrings (Markdown)
would show literally. This griffe extension rewrites each docstring after
griffe has loaded the package and before mkdocstrings parses it, so the Python
sources stay as they are:

* Sphinx roles — ``:class:`evopes.OnlineES```, ``:meth:`~OnlineES.tell```,
  ``:func:``, ``:mod:``, ``:attr:``, ``:data:``, ``:exc:``, ``:obj:`` (with or
  without the ``py:`` domain) — become cross-references when the target is an
  object of the package (resolved from the docstring's own scope outwards, as
  Sphinx does), written as *optional* autorefs: a link where the target is
  rendered somewhere in the site, inline code where it is not (a private
  helper, ``jax.jit``). ``~`` shows the last name only, ``Title <target>``
  shows the title. ``:math:`...``` becomes ``$...$``; other roles become code.
* Literal blocks — a paragraph ending in ``::`` followed by an indented block —
  become a ``:`` and a fenced Python code block.
* Simple tables (columns marked by runs of ``=``; a row whose first column is
  blank continues the row above) become Markdown tables.
* ``.. math::`` becomes a ``$$`` block, and ``.. note::``/``.. warning::``
  (and the other standard admonitions) become Markdown admonitions.
* Hyperlinks ```text <https://...>`_`` become ``[text](https://...)``.

It is registered in ``mkdocs.yml`` under the mkdocstrings Python handler's
``extensions``. The conversion functions are plain functions of text, tested
in ``tests/test_docs_render.py``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any

import griffe

#: Roles that name a Python object.
PYTHON_ROLES = frozenset(
    {"class", "meth", "func", "attr", "mod", "data", "exc", "obj", "const", "type", "property"}
)
#: RST admonition directives and the Markdown admonition type they become.
ADMONITIONS = {
    "note": "note",
    "warning": "warning",
    "tip": "tip",
    "hint": "tip",
    "important": "important",
    "caution": "warning",
    "danger": "danger",
    "attention": "warning",
    "error": "failure",
    "seealso": "info",
}

_ROLE_RE = re.compile(
    r"(?<![\w`]):(?P<role>[A-Za-z][\w+-]*(?::[A-Za-z][\w+-]*)?):`(?P<body>[^`]+)`"
)
_TITLED_RE = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)
_LINK_RE = re.compile(r"`(?P<text>[^`<>]+?)\s*<(?P<url>[a-z]+://[^>]+)>`__?")
_BORDER_RE = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")
_DIRECTIVE_RE = re.compile(r"^(?P<indent> *)\.\. (?P<name>[\w-]+)::(?P<argument>.*)$")
_FENCE_RE = re.compile(r"^ *(```|~~~)")
_ARGS_SECTION_RE = re.compile(
    r"^(?P<indent> *)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|"
    r"Other Parameters|Attributes):\s*$"
)
_ARG_ITEM_RE = re.compile(r"^\s*\*{0,2}[\w.]+(\s*\([^)]*\))?(\s*,\s*\*{0,2}[\w.]+)*\s*:(\s|$)")

#: ``resolve(target) -> identifier or None``: the cross-reference identifier of
#: a role's target, or None when it is not an object of the package.
Resolver = Callable[[str], "str | None"]


# -- the conversion ------------------------------------------------------------------------------
def rst_to_markdown(text: str, resolve: Resolver | None = None) -> str:
    """Rewrites the reStructuredText idioms of one docstring (see the module docstring)."""
    lines = text.split("\n")
    lines = _move_stray_argument_lines(lines)
    lines = _convert_directives(lines)
    lines = _convert_literal_blocks(lines)
    lines = _convert_simple_tables(lines)
    out = []
    for is_code, chunk in _split_code(lines):
        out.extend(chunk if is_code else _convert_inline(chunk, resolve))
    return "\n".join(out)


def convert_roles(text: str, resolve: Resolver | None = None) -> str:
    """Rewrites Sphinx roles (and RST hyperlinks) in a piece of text."""

    def role(match: re.Match) -> str:
        name = match["role"].removeprefix("py:")
        body = match["body"].strip()
        if name == "math":
            return f"${body}$"
        titled = _TITLED_RE.match(body)
        if titled and titled["title"]:
            title, target = titled["title"], titled["target"].strip()
        else:
            target = body
            title = None
        if name not in PYTHON_ROLES:
            return f"`{title or target}`"
        shown_last = target.startswith("~")
        target = target.lstrip("~").lstrip(".").removesuffix("()")
        if title is None:
            title = target.rsplit(".", 1)[-1] if shown_last else target
        identifier = resolve(target) if resolve is not None else None
        if identifier is None:
            return f"`{title}`"
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    text = _ROLE_RE.sub(role, text)
    return _LINK_RE.sub(lambda m: f"[{m['text']}]({m['url']})", text)


def simple_table_to_markdown(table: list[str]) -> list[str]:
    """One RST simple table (its lines, borders included) as Markdown table lines."""
    indent = len(table[0]) - len(table[0].lstrip(" "))
    border = table[0]
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    starts = [start for start, _ in columns] + [None]
    border_rows = [i for i, line in enumerate(table) if _BORDER_RE.match(line)]
    header_end = border_rows[1] if len(border_rows) >= 3 else None

    def cells(line: str) -> list[str]:
        return [line[starts[i] : starts[i + 1]].strip() for i in range(len(columns))]

    header: list[list[str]] = []
    body: list[list[str]] = []
    for i, line in enumerate(table):
        if i in border_rows or not line.strip():
            continue
        if set(line.strip()) <= {"-", " "}:  # column-span underline
            continue
        rows = header if header_end is not None and i < header_end else body
        row = cells(line)
        if rows and not row[0]:  # first column blank: continues the row above
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], row, strict=True)]
        else:
            rows.append(row)
    head = [" ".join(cell for cell in column if cell) for column in zip(*header, strict=True)]
    if not head:
        head = [""] * len(columns)
    pad = " " * indent

    def markdown_row(row: list[str]) -> str:
        return pad + "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    return [markdown_row(head), pad + "|" + " --- |" * len(columns)] + [
        markdown_row(row) for row in body
    ]


# -- block-level passes -----------------------------------------------------------------------
def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the block of blank or more-than-``indent`` lines starting at ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _dedented(block: list[str]) -> list[str]:
    indents = [_indent_of(line) for line in block if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:] for line in block]


def _move_stray_argument_lines(lines: list[str]) -> list[str]:
    """Moves a line of an ``Args:`` section that names no argument (and its continuation)
    after the section, where it reads as a note instead of a bogus parameter; for
    example ``(the rest as :class:`evopes.OnlineES`)`` closing a subclass's arguments."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _ARGS_SECTION_RE.match(lines[i])
        out.append(lines[i])
        i += 1
        if match is None:
            continue
        indent = len(match["indent"])
        end = _block_end(lines, i, indent)
        body = lines[i:end]
        item_indent = min((_indent_of(line) for line in body if line.strip()), default=0)
        kept: list[str] = []
        moved: list[str] = []
        target = kept
        for line in body:
            if line.strip() and _indent_of(line) == item_indent:
                target = kept if _ARG_ITEM_RE.match(line) else moved
            target.append(line)
        out += kept
        if moved:
            pad = " " * indent
            out += [""] + [(pad + line) if line.strip() else "" for line in _dedented(moved)]
        i = end
    return out


def _convert_directives(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE_RE.match(lines[i])
        name = match["name"].lower() if match else None
        if match is None or (name != "math" and name not in ADMONITIONS):
            out.append(lines[i])
            i += 1
            continue
        indent = len(match["indent"])
        end = _block_end(lines, i + 1, indent)
        content = _dedented(lines[i + 1 : end])
        while content and not content[0].strip():
            content.pop(0)
        pad = " " * indent
        argument = match["argument"].strip()
        if name == "math":
            body = [argument] if argument else []
            out += [pad + "$$", *(pad + line for line in body + content), pad + "$$"]
        else:
            first = [argument] if argument else []
            out.append(f"{pad}!!! {ADMONITIONS[name]}")
            out += [(pad + "    " + line) if line.strip() else "" for line in first + content]
        i = end
    return out


def _convert_literal_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        if in_fence or not line.rstrip().endswith("::") or line.lstrip().startswith(".."):
            out.append(line)
            i += 1
            continue
        indent = _indent_of(line)
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        if start == i + 1 or start >= len(lines) or _indent_of(lines[start]) <= indent:
            out.append(line)  # not a literal block (RST needs a blank line, then indentation)
            i += 1
            continue
        stripped = line.rstrip()[:-2].rstrip()
        if stripped:  # "Paragraph::" -> "Paragraph:"; a lone "::" disappears
            out.append(stripped + ":" if not line.rstrip()[:-2].endswith(" ") else stripped)
        pad = " " * indent
        end = _block_end(lines, start, indent)
        out += ["", pad + "```python"]
        out += [(pad + code) if code.strip() else "" for code in _dedented(lines[start:end])]
        out += [pad + "```"]
        i = end
    return out


def _convert_simple_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _BORDER_RE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        # A table is the top border, up to two more borders, and the rows between them.
        end, borders = i + 1, 1
        while end < len(lines) and borders < 3:
            if _BORDER_RE.match(lines[end]):
                borders += 1
                end += 1
                if end < len(lines) and not lines[end].strip():
                    break  # a blank line after a border closes the table
            elif not lines[end].strip() and borders == 1:
                break
            else:
                end += 1
        table = lines[i:end]
        if borders < 2:
            out.extend(table)
        else:
            if out and out[-1].strip():
                out.append("")
            out.extend(simple_table_to_markdown(table))
            if end < len(lines) and lines[end].strip():
                out.append("")
        i = end
    return out


def _split_code(lines: list[str]) -> Iterator[tuple[bool, list[str]]]:
    """Chunks of ``lines``, each flagged whether it is a fenced code block."""
    chunk: list[str] = []
    in_fence = False
    for line in lines:
        if _FENCE_RE.match(line):
            if in_fence:
                chunk.append(line)
                yield True, chunk
                chunk = []
                in_fence = False
                continue
            if chunk:
                yield False, chunk
            chunk, in_fence = [line], True
            continue
        chunk.append(line)
    if chunk:
        yield in_fence, chunk


def _convert_inline(lines: list[str], resolve: Resolver | None) -> list[str]:
    return convert_roles("\n".join(lines), resolve).split("\n")


# -- resolving targets in the loaded package -------------------------------------------------------
def make_resolver(obj: griffe.Object, collection: Any) -> Resolver:
    """Resolves a role's target from ``obj``'s scope outwards, then as an absolute path."""

    def lookup(path: str) -> str | None:
        try:
            found = collection[path]
            return found.canonical_path
        except Exception:  # noqa: BLE001 - missing, or an alias to an unloaded package
            return None

    def resolve(target: str) -> str | None:
        scope: griffe.Object | None = obj
        while scope is not None:
            if (found := lookup(f"{scope.path}.{target}")) is not None:
                return found
            scope = scope.parent
        return lookup(target)

    return resolve


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _objects(member)


class RstDocstrings(griffe.Extension):
    """griffe extension: rewrites every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            docstring = obj.docstring
            if docstring is None:
                continue
            resolve = make_resolver(obj, loader.modules_collection)
            docstring.value = rst_to_markdown(docstring.value, resolve)
            docstring.__dict__.pop("parsed", None)  # drop a parse of the old text, if any

    # griffe < 2 calls the same event by this name.
    on_package_loaded = on_package
