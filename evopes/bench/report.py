"""Renders the committed benchmark results as Markdown tables for the docs.

Run from the root of a source checkout (or pass ``--root``), after
regenerating results with ``python -m evopes bench NAME --out benchmarks/results``::

    python -m evopes.bench.report

It reads every ``benchmarks/results/*.json`` of the checkout and writes, per
benchmark, ``docs/results/tables/<name>.md`` (one table per list of records in
the JSON: ``rows``, ``compile_rows``, ...) and copies its plot to
``docs/results/img/<name>.png``. The results pages include the tables with
``--8<--``, so the docs always show what the last run printed, marked with
the run's mode (quick or full) and context.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: Folders of a source checkout, relative to its root.
RESULTS = Path("benchmarks", "results")
TABLES = Path("docs", "results", "tables")
IMAGES = Path("docs", "results", "img")
#: Context fields written by ``evopes.bench.common.write_results``.
CONTEXT = ("quick", "seed", "jax_version", "backend", "devices", "machine")


def cell(value) -> str:
    """One table cell: 4 significant digits for floats, '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of flat records, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def record_lists(payload: dict) -> dict[str, list[dict]]:
    """Every list of flat records in a result file (``rows`` first)."""
    lists = {
        key: value
        for key, value in payload.items()
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
    }
    return dict(sorted(lists.items(), key=lambda item: item[0] != "rows"))


def render(payload: dict) -> str:
    """The Markdown of one result file: its context line and its tables."""
    mode = "`--quick`" if payload.get("quick") else "full"
    context = ", ".join(f"{key} {payload[key]}" for key in CONTEXT[1:] if key in payload)
    parts = [f"*Run: {mode} mode; {context}.*"]
    for key, rows in record_lists(payload).items():
        if key != "rows":
            parts.append(f"**{key}**")
        parts.append(markdown_table(rows))
    return "\n\n".join(parts) + "\n"


def main(
    root: Path | str = ".", *, tables: Path | None = None, images: Path | None = None
) -> list[Path]:
    """Renders ``root/benchmarks/results`` into ``root/docs/results`` (or tables, images)."""
    root = Path(root)
    results = root / RESULTS
    if not results.is_dir():
        raise FileNotFoundError(
            f"{results} not found: run from the root of a source checkout of evopes or pass --root"
        )
    tables = root / TABLES if tables is None else Path(tables)
    images = root / IMAGES if images is None else Path(images)
    tables.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(results.glob("*.json")):
        payload = json.loads(path.read_text())
        target = tables / f"{path.stem}.md"
        target.write_text(render(payload))
        written.append(target)
        plot = path.with_suffix(".png")
        if plot.exists():
            shutil.copyfile(plot, images / plot.name)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m evopes.bench.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", default=".", help="root of the source checkout (default: .)")
    for written_path in main(parser.parse_args().root):
        print(f"wrote {written_path}")
