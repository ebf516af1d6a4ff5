"""Lightning training plans."""

from ._classification import ClassificationTrainingPlan, macro_f1

__all__ = ["ClassificationTrainingPlan", "macro_f1"]
