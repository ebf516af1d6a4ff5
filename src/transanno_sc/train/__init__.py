"""Lightning training plans, post-hoc calibration, the linear classifier recipe and the
multi-device set-up."""

from ._base import WarmupCosineTrainingPlan
from ._calibration import expected_calibration_error, fit_temperature
from ._classification import ClassificationTrainingPlan, macro_f1
from ._distributed import configure_distributed, in_notebook, n_devices
from ._linear import class_weights, logistic_regression, weighting_power
from ._pretraining import PretrainingPlan

__all__ = [
    "ClassificationTrainingPlan",
    "PretrainingPlan",
    "WarmupCosineTrainingPlan",
    "class_weights",
    "configure_distributed",
    "expected_calibration_error",
    "fit_temperature",
    "in_notebook",
    "logistic_regression",
    "macro_f1",
    "n_devices",
    "weighting_power",
]
