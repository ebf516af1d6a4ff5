"""Sphinx configuration (scverse template style).

Build offline and warning-free with::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Cross-references to other projects (anndata, scanpy, scvi-tools, torch, ...) are resolved through
intersphinx only when ``TRANSANNO_DOCS_INTERSPHINX=1`` is set (Read the Docs, or any machine
online): fetching their inventories needs the network, and an unreachable inventory is a
warning, which ``-W`` turns into a failed build. ``nitpicky`` stays on, so every reference to
transanno-sc's own API must resolve; references to other packages that cannot be resolved
offline are listed in ``nitpick_ignore_regex`` and render as plain text.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

project = "transanno-sc"
author = "transanno-sc developers"
copyright = f"{date.today().year}, {author}"
release = _version("transanno-sc")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
    "transanno_docs",
]

# -- sources -----------------------------------------------------------------------------------
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "tutorials/README.md", "tutorials/_outputs"]
templates_path = ["_templates"]
default_role = "literal"  # `x` in docstrings is code, as in scanpy
html_static_path = ["_static"]
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # the included README starts below its own h1

# -- API reference -----------------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
always_document_param_types = False
typehints_use_signature_return = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]

# -- citations (``:cite:p:`` in docstrings) ----------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# -- notebooks ---------------------------------------------------------------------------------
# Executed at build time (cached by content in docs/_build/.jupyter_cache), so the rendered
# pages show current results; the multi-GPU recipe needs GPUs and a large file, so it is shown
# with the outputs it has (none). TRANSANNO_DOCS_EXECUTE sets myst-nb's execution mode: CI
# (.ci/run) builds with "off", since its test run (tests/test_tutorials.py) has just executed
# the tutorials and checked their results; the tutorials run once per CI run.
nb_execution_mode = os.environ.get("TRANSANNO_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_excludepatterns = ["*multi_gpu_large_data*"]
nb_execution_timeout = 600
nb_execution_in_temp = True  # files the notebooks write stay out of the source tree
nb_execution_raise_on_error = True
nb_merge_streams = True

# -- cross-references --------------------------------------------------------------------------
nitpicky = True
_EXTERNAL = (
    "anndata",
    "mudata",
    "scanpy",
    "scvi",
    "torch",
    "lightning",
    "transformers",
    "numpy",
    "np",
    "pandas",
    "pd",
    "scipy",
    "sklearn",
    "matplotlib",
    "collections",
    "typing",
    "pathlib",
    "os",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?"),
    # numpydoc-style type words and values in prose ("optional", "None", "array-like", ...)
    (r"py:.*", r"(None|optional|array-like|default|callable|Literal|Axes|Figure)"),
    # submodules of TransAnnoModule (torch attributes, not documented members)
    (r"py:attr", r"(value_head|classifier|backbone|wide)"),
]
intersphinx_mapping = {}
if os.environ.get("TRANSANNO_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "mudata": ("https://mudata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
        "python": ("https://docs.python.org/3", None),
    }

# -- HTML --------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "transanno-sc"
html_theme_options = {
    "repository_url": "https://github.com/transanno-sc/transanno-sc",
    "use_repository_button": False,
    "show_toc_level": 2,
}

# -- methods a class page lists ------------------------------------------------------------------
# ``TransAnno`` gets its public methods from mixins (``transanno_sc.model.base``): the class
# template lists every public method defined in a transanno_sc class of its MRO (not those
# inherited from scvi-tools' BaseModelClass), and autodoc documents them
# (``:inherited-members: BaseModelClass``).
def _own_methods(cls) -> list[str]:
    names = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("transanno_sc"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in names:
                continue
            if callable(value) or isinstance(value, classmethod | staticmethod):
                names.append(name)
    return sorted(names)


def _mixin_pages() -> dict[str, list[str]]:
    import transanno_sc as ta

    return {"transanno_sc.model.TransAnno": _own_methods(ta.model.TransAnno)}


autosummary_context = {"own_methods": _mixin_pages()}
