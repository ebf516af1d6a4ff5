"""Plots of annotation results and training, scanpy style (``show``, ``save``, ``ax``)."""

from ._confidence import confidence
from ._confusion_matrix import confusion_matrix
from ._markers import marker_genes
from ._training_history import training_history

__all__ = ["confidence", "confusion_matrix", "marker_genes", "training_history"]
