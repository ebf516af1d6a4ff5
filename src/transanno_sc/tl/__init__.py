"""Tools: annotate cell types and evaluate the annotation."""

from ._annotate import transanno_annotate
from ._evaluate import evaluate

__all__ = ["evaluate", "transanno_annotate"]
