"""Local Sphinx extension.

- ``benchmarks.md`` includes ``../benchmarks/README.md``; when that file is not there (a checkout
  without the benchmarks), a short note replaces the include instead of a build error.
- "Bases:" lines name our classes by their public path (``transanno_sc.train.X``), not the
  private module that defines them (``transanno_sc.train._base.X``), which has no page.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_README = Path(__file__).parents[2] / "benchmarks" / "README.md"
PLACEHOLDER = """
# Benchmarks

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


def _public_path(cls) -> str | None:
    """``transanno_sc.train.X`` for a class defined in ``transanno_sc.train._base``."""
    module = getattr(cls, "__module__", "") or ""
    if not module.startswith("transanno_sc."):
        return None
    parts = module.split(".")
    public = ".".join(p for p in parts if not p.startswith("_"))
    return f"{public}.{cls.__qualname__}"


def _public_bases(app, name, obj, options, bases: list) -> None:
    for i, base in enumerate(bases):
        path = _public_path(base) if isinstance(base, type) else None
        if path is not None:
            bases[i] = f":py:class:`~{path}`"


def setup(app):
    app.connect("source-read", _benchmarks_fallback)
    app.connect("autodoc-process-bases", _public_bases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
