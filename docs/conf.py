"""Sphinx configuration (scverse template style). Full docs build: issue #7."""

project = "transanno-sc"
author = "transanno-sc developers"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
nb_execution_mode = "cache"
intersphinx_mapping = {
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}
html_theme = "sphinx_book_theme"
exclude_patterns = ["_build"]
