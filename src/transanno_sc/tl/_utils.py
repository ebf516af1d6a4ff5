"""Helpers shared by the ``tl`` functions."""

from __future__ import annotations


def versions() -> dict[str, str]:
    """Versions of the packages that shape the results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transanno-sc", "scvi-tools", "torch", "transformers", "anndata"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
