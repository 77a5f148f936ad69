"""The results pages show what the benchmarks last wrote."""

from __future__ import annotations

import json

from evopes.bench import report


def test_render_has_a_table_per_record_list_and_marks_quick_runs():
    payload = {
        "benchmark": "demo", "quick": True, "seed": 3, "backend": "cpu",
        "rows": [{"config": "a", "ratio": 0.123456}, {"config": "b", "ratio": None}],
        "compile_rows": [{"strategy": "x", "ratio": 2.0}],
        "window": 100,
    }
    text = report.render(payload)
    assert "`--quick` mode" in text and "seed 3" in text
    assert "| config | ratio |\n|---|---|\n| a | 0.1235 |\n| b | - |" in text
    assert "**compile_rows**\n\n| strategy | ratio |" in text
    assert text.index("| config") < text.index("**compile_rows**")  # rows first


def test_docs_tables_match_the_committed_results(tmp_path):
    # Regenerating the tables from benchmarks/results gives the committed pages'
    # includes: re-run `python -m evopes.bench.report` after a benchmark.
    written = report.main(tables=tmp_path / "tables", images=tmp_path / "img")
    assert written
    for path in written:
        committed = report.TABLES / path.name
        assert committed.exists(), f"{committed} missing: run python -m evopes.bench.report"
        assert committed.read_text() == path.read_text(), path.name
    for result in report.RESULTS.glob("*.json"):
        assert json.loads(result.read_text())["rows"], result.name
