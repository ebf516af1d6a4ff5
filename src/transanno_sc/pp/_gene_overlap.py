"""Report how a dataset's genes line up with a model's vocabulary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anndata import AnnData

from transanno_sc.data import match_adata_genes

if TYPE_CHECKING:
    from transanno_sc.model import TransAnno


def gene_overlap(adata: AnnData, model: TransAnno) -> dict:
    """Match ``adata``'s genes to ``model``'s vocabulary by name and summarize.

    Names are matched exactly first, then case-insensitively (``Cd3e`` ~ ``CD3E``), as the model
    matches them: by ``var_names``, or by a gene-name column of ``adata.var`` (such as
    ``feature_name``) that matches more than twice as many genes.

    Parameters
    ----------
    adata
        The data to check.
    model
        A :class:`~transanno_sc.model.TransAnno` model.

    Returns
    -------
    A dict with ``n_model_genes``, ``n_matched``, ``n_exact``, ``n_case_insensitive``,
    ``n_unversioned`` (matched without Ensembl version suffixes), ``n_separators`` (matched
    reading ``.``, ``_`` and ``-`` alike), ``fraction``, ``gene_names``
    (``"var_names"`` or the ``var`` column the genes were matched by) and ``missing``
    (the model genes absent from ``adata``).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ta.model.TransAnno.setup_anndata(adata, labels_key="cell_type")
    >>> model = ta.model.TransAnno(adata)
    >>> ta.pp.gene_overlap(adata[:, :5000], model)["fraction"]  # doctest: +SKIP
    """
    if not isinstance(adata, AnnData):
        msg = f"adata must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    match = match_adata_genes(adata, model.var_names_)
    found = set(match.target.tolist())
    out = match.to_dict()
    out["missing"] = [g for j, g in enumerate(model.var_names_) if j not in found]
    return out
