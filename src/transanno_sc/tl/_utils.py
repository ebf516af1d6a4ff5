"""Helpers shared by the ``tl`` functions."""

from __future__ import annotations

from anndata import AnnData

RNA_MODALITY_NAMES = ("rna", "RNA", "gex", "GEX", "Gene Expression")


def get_rna(data, what: str = "adata") -> AnnData:
    """The AnnData itself, or the RNA modality of a MuData."""
    if isinstance(data, AnnData):
        return data
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover - mudata is a dependency
        MuData = ()
    if isinstance(data, MuData):
        for name in RNA_MODALITY_NAMES:
            if name in data.mod:
                return data.mod[name]
        msg = (
            f"{what} is a MuData without an RNA modality (looked for {list(RNA_MODALITY_NAMES)}; "
            f"found {list(data.mod)}). Pass the modality itself, e.g. `{what}.mod['...']`."
        )
        raise ValueError(msg)
    msg = f"{what} must be an AnnData or a MuData, got {type(data).__name__}."
    raise TypeError(msg)


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
