"""Local Sphinx extension: pages whose sources live outside ``docs/``.

``benchmarks.md`` includes ``../benchmarks/README.md``; when that file is not there (a checkout
without the benchmarks), a short note replaces the include instead of a build error.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_README = Path(__file__).parents[2] / "benchmarks" / "README.md"
PLACEHOLDER = """
```{note}
The benchmark report (`benchmarks/README.md`) is not in this checkout. Run
`python benchmarks/run.py` from a clone of the repository to reproduce it.
```
"""


def _benchmarks_fallback(app, docname: str, source: list[str]) -> None:
    if docname != "benchmarks" or BENCHMARKS_README.exists():
        return
    text = source[0]
    start = text.find("```{include} ../benchmarks/README.md")
    if start == -1:
        return
    end = text.find("```", text.find("\n", start)) + 3
    source[0] = text[:start] + PLACEHOLDER + text[end:]


def setup(app):
    app.connect("source-read", _benchmarks_fallback)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
