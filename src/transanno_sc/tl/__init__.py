"""Tools: annotate cell types, explain and evaluate the annotation."""

from ._annotate import transanno_annotate
from ._evaluate import evaluate
from ._markers import transanno_markers

__all__ = ["evaluate", "transanno_annotate", "transanno_markers"]
