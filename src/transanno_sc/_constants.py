"""Registry and tensor keys used across the package."""

from typing import NamedTuple


class _REGISTRY_KEYS_NT(NamedTuple):
    X_KEY: str = "X"
    LABELS_KEY: str = "labels"
    BATCH_KEY: str = "batch"


class _MODULE_KEYS_NT(NamedTuple):
    X_KEY: str = "x"
    LIBRARY_KEY: str = "library"
    Z_KEY: str = "z"
    LOGITS_KEY: str = "logits"
    DEEP_LOGITS_KEY: str = "deep_logits"
    COUNTS_KEY: str = "is_counts"
    DISTANCE_KEY: str = "latent_distance"
    N_EXPRESSED_KEY: str = "n_expressed"


REGISTRY_KEYS = _REGISTRY_KEYS_NT()
MODULE_KEYS = _MODULE_KEYS_NT()

#: Target sum used for library-size normalization of counts (counts per 10k).
TARGET_SUM = 1e4
#: Below this fraction of the model's genes found in a query, predictions are refused.
MIN_GENE_OVERLAP = 0.1
#: Below this fraction of the model's genes found in a query, a warning is issued.
WARN_GENE_OVERLAP = 0.5
#: Label written for cells whose confidence is below ``unassigned_threshold``.
UNASSIGNED = "Unassigned"
#: Typicality of a cell is p / (p + NOVELTY_ALPHA), p its novelty p-value: one half for a cell
#: as atypical as the most atypical 3% of held-out reference cells, so at the default threshold
#: of 0.5 about 3% of confidently classified cells like the reference's are "Unassigned".
NOVELTY_ALPHA = 0.03

#: Candidate weights of the Transformer's logits next to the wide path's (chosen on validation
#: cells after training by negative log-likelihood).
DEEP_WEIGHT_GRID = tuple(i / 20 for i in range(21))
#: Default weight of the Transformer's logits next to the wide path's (see ``TransAnno.train``).
DEFAULT_DEEP_WEIGHT = 0.3

#: A query cluster's cells called one type need at least this many for a novelty shift of
#: their own (:meth:`~transanno_sc.model.TransAnno._typewise_pvalue`) ...
MIN_CELLS_GROUP_SHIFT = 20
#: ... and median odds of at least this for the type (as the query context's undecided
#: clusters: a cluster the classifier is unsure of is not taken for a known type's state).
MIN_ODDS_GROUP_SHIFT = 2.0

#: Why cells are "Unassigned" (``uns["transanno"]["unassigned"]``), each cell counted under
#: the first that applies to it; the phrases are those of the log and the CLI.
UNASSIGNED_REASONS = {
    "no_expression": "without any expressed gene of the model",
    "foreign_markers": "in a query cluster whose markers the reference type lacks",
    "undecided_cluster": "in a cluster undecided between known types",
    "unlike_reference": "unlike the reference cells of their type",
    "unsure_between_types": "unsure between known types",
}
