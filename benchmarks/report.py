"""Renders the benchmarks' JSON results as Markdown tables for the docs.

``python -m benchmarks.report`` reads every ``benchmarks/results/*.json`` and
writes, per benchmark, ``docs/results/tables/<name>.md`` (one table per list
of records in the JSON: ``rows``, ``compile_rows``, ...) and copies its plot to
``docs/results/img/<name>.png``. The results pages include the tables with
``--8<--``, so the docs always show what the last run printed, marked with
the run's mode (quick or full) and context.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLES = ROOT / "docs" / "results" / "tables"
IMAGES = ROOT / "docs" / "results" / "img"
#: Context fields written by ``benchmarks.common.write_results``.
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


def main(results: Path = RESULTS, tables: Path = TABLES, images: Path = IMAGES) -> list[Path]:
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
    for written_path in main():
        print(f"wrote {written_path.relative_to(ROOT)}")
