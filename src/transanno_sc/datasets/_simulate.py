"""Technology shifts simulated on a count matrix, to check an annotation before trusting it.

Each function takes an :class:`~anndata.AnnData` of raw counts and returns a new one whose
``X`` (CSR, float32) holds the same cells as another technology or run would have measured
them; the input is left untouched. The new object carries copies of ``obs`` and ``var`` only:
``layers``, ``raw``, ``obsm``, ``varm``, ``obsp``, ``varp`` and ``uns`` describe the unshifted
counts (a ``'counts'`` layer would still hold them) and are left out. The test suite and
``benchmarks/cross_study.py`` build their shifted reference -> query cases with these
functions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def _counts(adata: AnnData, what: str) -> sp.csr_matrix:
    """A float32 CSR copy of ``adata.X``, refused unless it holds non-negative whole numbers."""
    if not isinstance(adata, AnnData):
        msg = f"{what} takes an AnnData, not {type(adata).__name__}."
        raise TypeError(msg)
    if adata.X is None:
        msg = f"{what} needs raw counts in adata.X, which is empty."
        raise ValueError(msg)
    X = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    if X.nnz and (not np.all(np.isfinite(X.data)) or X.data.min() < 0):
        msg = f"{what} needs raw counts in adata.X; it holds negative or NaN values."
        raise ValueError(msg)
    if X.nnz and not np.array_equal(X.data, np.round(X.data)):
        msg = (
            f"{what} needs raw (integer) counts in adata.X; it holds non-integer values "
            "(normalized or log values?). Pass an AnnData of the counts, e.g. from a "
            "'counts' layer: AnnData(adata.layers['counts'], obs=adata.obs, var=adata.var)."
        )
        raise ValueError(msg)
    return X


def _share(value: float, name: str, *, high_inclusive: bool) -> float:
    value = float(value)
    ok = 0 < value <= 1 if high_inclusive else 0 <= value < 1
    if not ok:
        interval = "(0, 1]" if high_inclusive else "[0, 1)"
        msg = f"{name} must lie in {interval}, got {value}."
        raise ValueError(msg)
    return value


def _with_x(adata: AnnData, X: sp.csr_matrix) -> AnnData:
    """The shifted ``X`` with copies of ``adata``'s ``obs`` and ``var``, and nothing else."""
    return AnnData(X, obs=adata.obs.copy(), var=adata.var.copy())


def simulate_depth(
    adata: AnnData, fraction: float, *, random_state: int | np.random.Generator | None = 0
) -> AnnData:
    """The cells at a shallower sequencing depth (binomial thinning of their counts).

    Each UMI is kept with probability ``fraction``, as a run sequenced ``fraction`` as deep or
    a technology that captures ``fraction`` as many molecules would have counted it.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    fraction
        Share of the counts kept, in (0, 1].
    random_state
        Seed or :class:`numpy.random.Generator`.

    Returns
    -------
    A new :class:`~anndata.AnnData` with the thinned counts in ``X`` and copies of ``obs`` and
    ``var`` (no layers, ``raw``, embeddings or ``uns``).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> shallow = ta.datasets.simulate_depth(adata, 0.1)
    >>> round(float(shallow.X.sum() / adata.X.sum()), 2)
    0.1
    """
    fraction = _share(fraction, "fraction", high_inclusive=True)
    X = _counts(adata, "simulate_depth")
    X.data = (
        np.random.default_rng(random_state)
        .binomial(X.data.astype(np.int64), fraction)
        .astype(np.float32)
    )
    X.eliminate_zeros()
    return _with_x(adata, X)


def simulate_ambient_rna(
    adata: AnnData,
    fraction: float = 0.2,
    *,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """The cells as droplets that also caught ambient RNA.

    Free transcripts of lysed cells (the "soup") end up in every droplet of a run. Each cell
    gets ``fraction / (1 - fraction)`` times its counts more, drawn from the pooled profile of
    all the cells in ``adata``, so that ``fraction`` of its counts are ambient: every cell then
    shows the abundant types' transcripts a little.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    fraction
        Share of each cell's counts that are ambient, in [0, 1).
    random_state
        Seed or :class:`numpy.random.Generator`.

    Returns
    -------
    A new :class:`~anndata.AnnData` with the contaminated counts in ``X`` and copies of ``obs`` and
    ``var`` (no layers, ``raw``, embeddings or ``uns``).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> soupy = ta.datasets.simulate_ambient_rna(adata, 0.2)
    >>> round(float(adata.X.sum() / soupy.X.sum()), 2)
    0.8
    """
    fraction = _share(fraction, "fraction", high_inclusive=False)
    X = _counts(adata, "simulate_ambient_rna")
    soup = np.asarray(X.sum(0), dtype=np.float64).ravel()
    if soup.sum() == 0:
        return _with_x(adata, X)
    soup /= soup.sum()
    extra = np.rint(np.asarray(X.sum(1)).ravel() * fraction / (1 - fraction)).astype(np.int64)
    rows = np.repeat(np.arange(X.shape[0]), extra)
    cols = np.random.default_rng(random_state).choice(X.shape[1], size=int(extra.sum()), p=soup)
    add = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=X.shape)
    return _with_x(adata, (X + add).tocsr())  # duplicates summed


def simulate_read_counts(
    adata: AnnData,
    reads_per_molecule: float = 20.0,
    *,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """The cells' UMI counts as integer read counts of a full-length, non-UMI protocol.

    Each molecule of gene ``g`` gives a negative binomial number of reads (shape 1, mean
    ``a_g``), with ``a_g`` log-normal around ``reads_per_molecule`` (log-sd 0.7: gene length
    and amplification efficiency), as in Smart-seq2 data.

    Parameters
    ----------
    adata
        Raw UMI counts in ``X``.
    reads_per_molecule
        Median over genes of the mean reads per molecule.
    random_state
        Seed or :class:`numpy.random.Generator`.

    Returns
    -------
    A new :class:`~anndata.AnnData` with the read counts in ``X`` and copies of ``obs`` and
    ``var`` (no layers, ``raw``, embeddings or ``uns``).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> reads = ta.datasets.simulate_read_counts(adata)
    >>> bool(reads.X.sum() > 10 * adata.X.sum())
    True
    """
    if not float(reads_per_molecule) > 0:
        msg = f"reads_per_molecule must be positive, got {reads_per_molecule}."
        raise ValueError(msg)
    X = _counts(adata, "simulate_read_counts")
    rng = np.random.default_rng(random_state)
    amp = np.exp(rng.normal(np.log(float(reads_per_molecule)), 0.7, size=X.shape[1]))
    c = X.data.astype(np.int64)
    X.data = rng.negative_binomial(c, c / (c + c * amp[X.indices])).astype(np.float32)
    X.eliminate_zeros()
    return _with_x(adata, X)


def simulate_tpm(adata: AnnData, *, random_state: int | np.random.Generator | None = 0) -> AnnData:
    """The cells' counts as TPM-like values: divided by a gene length, scaled to 1e6 per cell.

    Gene lengths are log-normal around 2 kb (log-sd 0.5), drawn once for all the cells, as a
    pipeline reporting transcripts per million (RSEM, Salmon) would give.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    random_state
        Seed or :class:`numpy.random.Generator`.

    Returns
    -------
    A new :class:`~anndata.AnnData` with the TPM values in ``X`` and copies of ``obs`` and
    ``var`` (no layers, ``raw``, embeddings or ``uns``).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()[:5]
    >>> tpm = ta.datasets.simulate_tpm(adata)
    >>> [round(float(s)) for s in tpm.X.sum(1).A1]
    [1000000, 1000000, 1000000, 1000000, 1000000]
    """
    X = _counts(adata, "simulate_tpm")
    length = np.exp(
        np.random.default_rng(random_state).normal(np.log(2000.0), 0.5, size=X.shape[1])
    )
    rate = (X @ sp.diags(1.0 / length)).tocsr().astype(np.float64)
    total = np.asarray(rate.sum(1)).ravel()
    scale = np.divide(1e6, total, out=np.zeros_like(total), where=total > 0)
    return _with_x(adata, (sp.diags(scale) @ rate).tocsr().astype(np.float32))
