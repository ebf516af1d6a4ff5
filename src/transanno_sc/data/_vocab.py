"""Match gene names between a dataset and a model's vocabulary (no AnnData)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: An Ensembl ID with a version suffix (``ENSG00000141510.17``, ``ENSMUSG00000059552.8``).
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+(_PAR_Y)?$")


@dataclass(frozen=True)
class GeneMatch:
    """Where each vocabulary gene sits in a dataset.

    Attributes
    ----------
    source
        Column positions in the dataset of the matched genes.
    target
        Positions of the same genes in the vocabulary.
    n_vocab
        Size of the vocabulary.
    n_exact
        Genes matched by their exact name.
    n_case_insensitive
        Further genes matched only after upper-casing both names (``Cd3e`` ~ ``CD3E``).
    n_unversioned
        Further genes matched only after dropping Ensembl version suffixes
        (``ENSG00000141510.17`` ~ ``ENSG00000141510``).
    n_separators
        Further genes matched only after reading ``.``, ``_`` and ``-`` alike (R's
        ``make.names`` writes ``HLA-DRA`` and ``H2-Ab1`` as ``HLA.DRA`` and ``H2.Ab1``;
        Seurat writes ``_`` as ``-``).
    names
        Where the dataset's gene names came from: ``"var_names"``, or a column of ``var``
        such as ``"var['feature_name']"`` (see :func:`~transanno_sc.data.match_adata_genes`).
    """

    source: np.ndarray
    target: np.ndarray
    n_vocab: int
    n_exact: int
    n_case_insensitive: int
    n_unversioned: int = 0
    n_separators: int = 0
    names: str = "var_names"

    @property
    def n_matched(self) -> int:
        """Number of vocabulary genes found in the dataset."""
        return int(self.target.size)

    @property
    def fraction(self) -> float:
        """Fraction of the vocabulary found in the dataset."""
        return self.n_matched / max(self.n_vocab, 1)

    def to_dict(self) -> dict:
        """Plain summary, writable to ``.h5ad`` ``uns``."""
        return {
            "n_model_genes": int(self.n_vocab),
            "n_matched": self.n_matched,
            "n_exact": int(self.n_exact),
            "n_case_insensitive": int(self.n_case_insensitive),
            "n_unversioned": int(self.n_unversioned),
            "n_separators": int(self.n_separators),
            "fraction": float(self.fraction),
            "gene_names": self.names,
        }


def _strip_ensembl_version(gene: str) -> str:
    """``gene`` without an Ensembl version suffix (unchanged if it is not a versioned ID)."""
    m = _ENSEMBL_VERSION.match(gene.upper())
    if m is None:
        return gene
    return gene[: len(m.group(1))] + (m.group(2) or "")


def gene_key(gene: str, *, case_insensitive: bool = True, drop_versions: bool = True) -> str:
    """The name genes are joined by when the exact one fails: upper-cased
    (``case_insensitive``) and without an Ensembl version suffix (``drop_versions``)."""
    key = _strip_ensembl_version(gene) if drop_versions else gene
    return key.upper() if case_insensitive else key


_SEPARATORS = re.compile(r"[._-]")


def separator_key(gene: str) -> str:
    """:func:`gene_key` with ``.``, ``_`` and ``-`` read alike, the last resort of
    :func:`match_genes` (``HLA.DRA`` ~ ``HLA-DRA``)."""
    return _SEPARATORS.sub("-", gene_key(gene))


def match_genes(
    dataset_genes: Sequence[str], vocab: Sequence[str], names: str = "var_names"
) -> GeneMatch:
    """Match ``vocab`` genes to ``dataset_genes`` by name.

    Exact names first; the remaining genes are matched when that is unambiguous after
    upper-casing both names (mouse ``Gnai3`` against an upper-case ``GNAI3`` panel) and
    dropping Ensembl version suffixes (``ENSG00000141510.17`` against ``ENSG00000141510``,
    GENCODE against Ensembl annotations), then after reading ``.``, ``_`` and ``-`` alike
    (``HLA.DRA`` against ``HLA-DRA``: R's ``make.names``). ``names`` says where ``dataset_genes`` came from
    (kept in the result).
    """
    dataset_genes = [str(g) for g in dataset_genes]
    vocab = [str(g) for g in vocab]
    pos = {g: i for i, g in enumerate(dataset_genes)}
    source, target = [], []
    unmatched = []
    for j, g in enumerate(vocab):
        i = pos.get(g)
        if i is None:
            unmatched.append(j)
        else:
            source.append(i)
            target.append(j)
    n_exact = len(source)
    n_ci = n_unversioned = n_separators = 0
    used = set(source)
    # looser keys one after the other, each for the genes the earlier ones left unmatched
    for key in (gene_key, separator_key):
        if not unmatched:
            break
        loose: dict[str, list[int]] = {}
        for i, g in enumerate(dataset_genes):
            if i not in used:
                loose.setdefault(key(g), []).append(i)
        left = []
        for j in unmatched:
            cand = [i for i in loose.get(key(vocab[j]), []) if i not in used]
            if len(cand) != 1:
                left.append(j)
                continue
            source.append(cand[0])
            target.append(j)
            used.add(cand[0])
            if dataset_genes[cand[0]].upper() == vocab[j].upper():
                n_ci += 1
            elif gene_key(dataset_genes[cand[0]]) == gene_key(vocab[j]):
                n_unversioned += 1
            else:
                n_separators += 1
        unmatched = left
    order = np.argsort(np.asarray(target, dtype=np.int64), kind="stable")
    return GeneMatch(
        source=np.asarray(source, dtype=np.int64)[order],
        target=np.asarray(target, dtype=np.int64)[order],
        n_vocab=len(vocab),
        n_exact=n_exact,
        n_case_insensitive=n_ci,
        n_unversioned=n_unversioned,
        n_separators=n_separators,
        names=names,
    )
