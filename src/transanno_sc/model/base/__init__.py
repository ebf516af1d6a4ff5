"""The parts of :class:`~transanno_sc.model.TransAnno`, one responsibility each (as
``scvi.model.base``): training, pretraining and backbone transfer, confidence, saving and
loading. Each mixin names what it needs from the model class."""

from ._confidence_mixin import ConfidenceMixin, assign_labels, confidence_score
from ._outputs import ForwardOutputs, cell_positions
from ._pretraining_mixin import PretrainingMixin
from ._save_load import SaveLoadMixin, apply_umask
from ._training_mixin import TrainingMixin

__all__ = [
    "ConfidenceMixin",
    "ForwardOutputs",
    "PretrainingMixin",
    "SaveLoadMixin",
    "TrainingMixin",
    "apply_umask",
    "assign_labels",
    "cell_positions",
    "confidence_score",
]
