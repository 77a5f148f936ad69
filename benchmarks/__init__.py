"""Benchmarks: scripts that measure evopes against its references.

Each module ``benchmarks/<name>.py`` (``-`` in the CLI name becomes ``_``)
exposes ``main(quick: bool, seed: int, out_dir: pathlib.Path) -> list[dict]``
and is run by ``python -m evopes bench <name> [--quick] [--seed S] [--out DIR]``
or directly as ``python -m benchmarks.<name>``. It writes ``<name>.json`` (a
dict with a list ``rows`` of flat records) and ``<name>.png`` to ``out_dir``.
"""
