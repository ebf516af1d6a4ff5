"""Lightning training plans and post-hoc calibration."""

from ._base import WarmupCosineTrainingPlan
from ._calibration import expected_calibration_error, fit_temperature
from ._classification import ClassificationTrainingPlan, macro_f1
from ._pretraining import PretrainingPlan

__all__ = [
    "ClassificationTrainingPlan",
    "PretrainingPlan",
    "WarmupCosineTrainingPlan",
    "expected_calibration_error",
    "fit_temperature",
    "macro_f1",
]
